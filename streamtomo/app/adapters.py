"""Our dranspose adapter classes, named once for the whole application layer.

dranspose takes worker and reducer classes as ``module:Class`` strings and imports
them itself (in a service process, or in replay), so the application layer names
them without importing them: ``streamtomo up`` stays light. A unit test checks that
each string resolves to its class.
"""

from __future__ import annotations

TOMO_WORKER = "streamtomo.workers.tomo_worker:TomoWorker"
TOMO_REDUCER = "streamtomo.reducer.tomo_reducer:TomoReducer"
