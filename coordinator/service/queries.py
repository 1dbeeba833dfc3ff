"""Read-only calls: model versions and their blobs, privacy budgets, study ids."""

from __future__ import annotations

from fedward.compliance.reports import BudgetReport
from fedward.coordinator.privacy.ledger_store import privacy_report
from fedward.protocol.codec import decode_tensors
from fedward.protocol.messages import ModelDownload, encode_frame

from .core import ServiceCore
from .errors import ModelVersionNotFound, NoPrivacyPolicy
from .views import ModelVersionInfo, version_info


class QueryCalls(ServiceCore):
    def model_versions(self, study_id: str) -> list[ModelVersionInfo]:
        with self._lock:
            self._require(study_id)
            return [version_info(r) for r in self._repo.model_versions(study_id)]

    def model_blob(self, study_id: str, version: int) -> bytes:
        """The stored model (``fedward.protocol.codec`` tensors), verified against its SHA-256."""
        with self._lock:
            study = self._require(study_id)
            sha = study.version_sha.get(version)
            if sha is None:
                raise ModelVersionNotFound(f"{study_id} has no model version {version}")
            return self._runtimes.blobs.get(sha)

    def model_frame(self, study_id: str, version: int) -> bytes:
        """A full-model ``ModelDownload`` frame of a version (what the API serves)."""
        with self._lock:
            study = self._require(study_id)
            params = decode_tensors(self.model_blob(study_id, version))
            header = ModelDownload(
                model_version=version,
                subset_id=study.engine.planner.ladder.full().subset_id,
                names=tuple(params),
            )
            return encode_frame(header, params, max_bytes=2**32 - 1)

    def privacy_report(self, study_id: str) -> BudgetReport:
        """Each device's composed epsilon against the study's budget, from the live ledger.

        Built under the lock so the report is one consistent cut of the ledger
        (no spend half-applied by a concurrent update). Raises
        :class:`NoPrivacyPolicy` for a study without DP.
        """
        with self._lock:
            study = self._require(study_id)
            report = privacy_report(study.engine, study_id=study.id)
            if report is None:
                raise NoPrivacyPolicy(f"study {study_id!r} has no privacy policy")
            return report

    def study_ids(self) -> list[str]:
        """Ids of every study (the metrics collector's source)."""
        with self._lock:
            return list(self._studies)
