"""The judge: what a SQL string is, what the policy says of it, and what the session does.

Pure (no I/O): statement reading and classification (:mod:`.classify`, :mod:`.collect`,
:mod:`.statement`), effect proofs (:mod:`.effects`), fingerprints (:mod:`.fingerprint`), the
registry of functions, catalog relations and risky shapes, as data (:mod:`.registry`), the
settings an agent may change (:mod:`.settings`), verdicts (:mod:`.verdict`), the ready action
the session takes (:mod:`.action`) and the one judgement cache (:mod:`.cache`).
"""
