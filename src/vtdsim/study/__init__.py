"""The seed study: each mailing-list thread in ``shared/seeds`` answered with the checker's
verdicts, the timed simulator's costs, the recordings that measure the same thing and the
published figures, one module per thread (``seed000`` ... ``seed004``), run by ``runner``.

It sits with the CLI at the top of the import order: it drives checker/, simulation/ and
traces/ through their Python APIs and adds no VT-d semantics of its own.

Not provided: a verdict the checker did not reach (an unexpected verdict is shown as such, the
conclusion is then marked as resting on it), costs a platform does not model yet (marked).
"""
