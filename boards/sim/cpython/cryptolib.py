"""CPython stand-in for MicroPython's cryptolib, over the `cryptography` package.

Same behaviour as cryptolib of the MicroPython unix port: aes(key, mode, iv)
with mode 1 (ECB) or 2 (CBC) (the unix build has no CTR), 16- or 32-byte keys,
input a multiple of 16 bytes, and each object either encrypts or decrypts.
"""
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MODE_ECB = 1
MODE_CBC = 2


class aes:
    """AES cipher object; CBC state carries over between calls."""

    def __init__(self, key, mode, IV=None):
        key = bytes(key)
        if len(key) not in (16, 32):
            raise ValueError("key")
        if mode == MODE_ECB:
            cipher_mode = modes.ECB()
        elif mode == MODE_CBC:
            if IV is None or len(IV) != 16:
                raise ValueError("IV")
            cipher_mode = modes.CBC(bytes(IV))
        else:
            raise ValueError("mode")
        self._cipher = Cipher(algorithms.AES(key), cipher_mode)
        self._op = None
        self._direction = None

    def _run(self, direction, in_buf, out_buf):
        if self._direction is None:
            self._direction = direction
            if direction == "encrypt":
                self._op = self._cipher.encryptor()
            else:
                self._op = self._cipher.decryptor()
        elif self._direction != direction:
            raise ValueError("can't encrypt & decrypt")
        data = bytes(in_buf)
        if len(data) % 16:
            raise ValueError("blksize % 16")
        result = self._op.update(data)
        if out_buf is None:
            return result
        if len(out_buf) < len(data):
            raise ValueError("output too small")
        out_buf[: len(result)] = result
        return out_buf

    def encrypt(self, in_buf, out_buf=None):
        """Encrypt in_buf; return the result, or out_buf after writing it there."""
        return self._run("encrypt", in_buf, out_buf)

    def decrypt(self, in_buf, out_buf=None):
        """Decrypt in_buf; return the result, or out_buf after writing it there."""
        return self._run("decrypt", in_buf, out_buf)
