"""Relevancy methods behind one interface ([`RelevancyMethod`]), one method a file, found by name in a registry.

Built in: ``"fastrm"`` (the head; inside `generate()`), ``"gradient"`` (the exact gradient teacher), ``"attention"``
(raw attention of the last layer, mean of heads), ``"rollout"`` (attention rollout, Abnar & Zuidema 2020) and
``"lvlm-interpret"`` (LVLM-Interpret's rule). Every method returns a [`FastRMResult`] assembled by
`hf_fastrm.results`, so masks and confidence follow one rule.

```python
>>> from hf_fastrm.methods import available_methods, get_method
>>> result = get_method("rollout").attribute(model, inputs, out.sequences)
>>> result.relevancy.shape  # (batch, new_tokens, image_tokens)
```
"""

from . import attention, fastrm, gradient, lvlm_interpret, rollout  # noqa: F401  (register the built-in methods)
from .base import RelevancyMethod, available_methods, get_method, register_method, unregister_method

__all__ = ["RelevancyMethod", "available_methods", "get_method", "register_method", "unregister_method"]
