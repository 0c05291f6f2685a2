"""The ``rloss`` command groups, one module each, each exposing ``register(subparsers)``.

* :mod:`rloss.commands.demo` — ``rloss demo``
* :mod:`rloss.commands.segment` — ``rloss segment``
* :mod:`rloss.commands.data` — ``rloss data voc|synthetic``, ``rloss scribbles convert|synth``
* :mod:`rloss.commands.train` — ``rloss train``, ``rloss eval``, ``rloss predict``
* :mod:`rloss.commands.viz` — ``rloss visualize-gradient``

Registration builds argparse parsers only (fast ``--help``); handlers import the library
when they run. Shared rules (errors, help format, output and device checks) live in
:mod:`rloss.commands._common`; file-safety rules in :mod:`rloss._io`.
"""

#: Modules that contribute subcommands, in the order ``rloss --help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "rloss.commands.demo",
    "rloss.commands.segment",
    "rloss.commands.data",
    "rloss.commands.train",
    "rloss.commands.viz",
)
