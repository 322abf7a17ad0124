"""xsil backend plugins (installed as ``xsil.backends``). Each backend is one small module; the
contract every backend follows is in README.md next to this file.

The package object is also callable: ``xsil.backends()`` lists every registered backend as data
(name, kind, score, available, reason, devices), as the selection API promises.
"""

import sys
import types


class _CallableBackendsModule(types.ModuleType):
    def __call__(self, refresh: bool = False) -> list:
        from xsil import _backends_table

        return _backends_table(refresh)


sys.modules[__name__].__class__ = _CallableBackendsModule
