"""Training data made here: sample structures and label them at a stated level of theory.

``transip data generate CONFIG.yaml --output DIR`` (``cli.py``): systems (``systems.py``:
peptides, water, ions, electrolytes, seeds from OMol25/SPICE files and from MD runs) →
samplers (``samplers.py``: teacher MD, displacements, bond scans, close contacts) →
labellers (``labellers.py``: GFN2-xTB via tblite, ωB97M-V via PySCF) → ``.aselmdb`` shards
in the OMol25 layout (``shards.py``), planned per task (``plan.py``), run by worker
processes (``worker.py``, ``generate.py``). See ``data/README.md``.
"""
