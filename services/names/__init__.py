"""The name server (DESIGN §6): services register capabilities under names, clients
look them up and receive derived, badged capabilities. Started by the kernel at boot
(`mkipc kernel --no-names` turns it off); clients use it as `k.names`.

The wire protocol is in `services.names.protocol`; the server in `.server`.
"""
