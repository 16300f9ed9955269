"""Which files the routelens wheel holds (the project's metadata is in pyproject.toml).

Besides the ``routelens`` package, the wheel carries the dashboard and the demo data inside the
package, so ``pip install routelens`` gives a working ``routelens app`` and ``routelens capture``:

* ``app/``  -> ``routelens/_app/``  (``main.py``, ``rlapp/``, ``views/``, ``assets/``)
* ``data/`` -> ``routelens/_data/`` (``demo-moe/``: the demo checkpoint; ``corpus/``: its text)

``app/`` and ``data/`` stay at the top of the repository as the sources; a checkout
(``pip install -e .``) uses them in place (see ``routelens/bundled.py``). ``scripts/``, ``tests/``,
``benchmarks/`` and ``docs/`` are not installed.
"""

from setuptools import find_packages, setup

BUNDLED = {"routelens._app": "app", "routelens._data": "data"}

setup(
    # find_packages, not a list: a new routelens subpackage is shipped without editing this file
    packages=find_packages(include=["routelens", "routelens.*"])
    + ["routelens._app", "routelens._app.rlapp", "routelens._app.views", "routelens._data"],
    package_dir=BUNDLED,
    package_data={
        "routelens._app": ["assets/*"],
        "routelens._data": ["demo-moe/*.json", "demo-moe/*.safetensors", "corpus/*.txt"],
    },
    include_package_data=False,  # exactly the modules and the globs above: no caches, no stray files
)
