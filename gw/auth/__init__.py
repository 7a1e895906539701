"""Authentication machinery the auth phases call: JWT verification and the key sets it trusts.

Nothing here knows the proxy or the phase chain: a phase hands a token to a `Verifier`
(gw.auth.jwt) and gets back who the caller is or why not.
"""
