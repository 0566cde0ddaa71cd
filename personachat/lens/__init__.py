"""The lens: where and why the personas diverge, token by token, and persona vectors.

- :mod:`~personachat.lens.render`: the scored sequence of an answer (chat template + answer, one
  string, one tokenization) and the answer's tokens.
- :mod:`~personachat.lens.score`: each answer token's log-probability under a model, by teacher
  forcing: on vLLM through ``prompt_logprobs``, in-process by one forward pass.
- :mod:`~personachat.lens.records`: divergence records in the transcript, the cache they form.
- :mod:`~personachat.lens.diverge`: score a whole transcript against a pane, resumably.
- :mod:`~personachat.lens.colour`: an answer's tokens coloured by divergence in the HTML export.
- :mod:`~personachat.lens.persona`: persona vectors from a persona_vectors trait file.
- ``diverge_cli`` and ``persona_cli``: ``personachat diverge`` and ``personachat persona extract``.

Nothing is imported here: ``personachat --help`` imports the CLI modules of this package. See
docs/lens.md.
"""
