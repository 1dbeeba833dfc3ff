"""docs/study-file.md is generated from the study file models and must be current."""

from pathlib import Path

from fedward.simulation.studyfile import reference_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "study-file.md"


def test_the_reference_page_matches_the_models() -> None:
    # Prepare / Execute
    generated = reference_markdown()
    # Assert: regenerate with `python -m fedward.simulation.studyfile --reference > docs/study-file.md`
    assert DOC.read_text() == generated, "docs/study-file.md is stale: regenerate it"
    assert "| `target_accuracy` |" in generated and "## Privacy" in generated
