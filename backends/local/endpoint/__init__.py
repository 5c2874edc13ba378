"""The local online endpoint: a front process that routes by Azure's traffic rules to one
server process per deployment, all on loopback, state in `<state_dir>/endpoints/<name>/`.

- `rules`: Azure's traffic/mirror/delete rules and the weighted pickers (pure).
- `state`: the persisted record, the keys, the lock.
- `front`: the front process (`python -m backends.local.endpoint.front`).
- `control`: `LocalEndpoints`, the endpoint part of the Workspace protocol.
"""
