"""Policy: what the commands do, built from the layers below.

Owns preflight (the one home for every refusal before the pause), inspect,
update, the one rollback used by both the tool and the guardian, the guardian
process, recover (a process a dead tool and guardian left mid-update), the
per-process lock, forking-server trees and interrupts. It may import every layer below
(`binary/`, `plan/`, `target/`, `state/`); only `cli`, `render` and `xform`
import it.
"""
