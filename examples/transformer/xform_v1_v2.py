"""bank v1 -> v2: `name` became `owner`, euros became cents, and a new total.

Without this file the update would run, but v2's accounts would have no owner
and no money: `diff` lists v1's fields as dropped and v2's as initial values.
"""

from ekiden_trace.xform import field, variable


@field("struct account", "owner")  # v2's field, from each old struct account
def owner(old_account, ctx):
    return old_account.name.text  # a str fills a char array


@field("struct account", "cents")
def cents(old_account, ctx):
    return old_account.balance * 100


@variable("total_cents")  # a tag v1 lacks: `old` is None, the rest is read with ctx.old
def total_cents(old, ctx):
    accounts = list(ctx.old("accounts"))[: ctx.old("naccounts")]
    return sum(account.balance for account in accounts) * 100
