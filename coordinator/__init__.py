"""The coordinator: live studies from device frames to audited model versions.

Along the data path:

    mqtt/          StudyBridge, BridgeSupervisor: device topics <-> the service
    service/       StudyService: the one façade (one lock, one transaction per call)
    engine/        Engine: tasks, guards' decisions, updates in, merges; no I/O
    strategies/    FedAvg, FedBuff, FedAsync, FTTE, client DP, NormBounded; pure
    store/         database, model blobs, engine snapshots, lineage, the audit recorder

Beside it:

    privacy/       study DP settings, PrivacyGuard, its events, the ledger's file form
    audit.py       the one place that formats audit entries
    api/           the REST API (FastAPI) and Prometheus metrics, both over the service
    settings.py    CoordinatorSettings (``FEDWARD_*`` environment variables)
    study_spec.py  StudySpec and ``build_engine``, shared by the live service and the simulator
    errors.py      CoordinatorError and its subtree
    migrations/    Alembic migrations of the database, run at start-up
"""
