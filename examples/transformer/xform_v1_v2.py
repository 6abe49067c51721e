"""bank v1 -> v2: `name` became `owner`, euros became cents, and a new total.

Without this file the update is refused: v1's `name` and `balance` would be
dropped (`diff` lists them, flags `name` as likely renamed to `owner`, and
shows v2's fields keeping their initial values).
"""

from ekiden_trace.xform import field, rename, variable

rename("struct account", "name", "owner")  # the same char [16] under a new name


@field("struct account", "cents", replaces="balance")  # v2's field, from each old account
def cents(old_account, ctx):
    return old_account.balance * 100


@variable("total_cents")  # a tag v1 lacks: `old` is None, the rest is read with ctx.old
def total_cents(old, ctx):
    accounts = list(ctx.old("accounts"))[: ctx.old("naccounts")]
    return sum(account.balance for account in accounts) * 100
