"""Running analyses on a federation: send requests through a `Transport`, collect typed
replies, combine releases into tables, fit models round by round, write the outputs."""
