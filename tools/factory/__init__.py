"""Factory tools: the NVS schema, provisioning, flashing, board descriptions, the clouds' CAs."""
