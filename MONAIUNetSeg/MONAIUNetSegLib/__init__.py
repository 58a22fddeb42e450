"""Slicer-only glue of the MONAIUNetSeg module: MRML nodes (``mrml``), background jobs (``jobs``) and
Python dependency installation (``dependencies``). All computation lives in the core package ``monaiunetseg``
beside this folder."""
