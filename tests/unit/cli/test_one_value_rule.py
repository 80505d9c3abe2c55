"""One definition of a value: the same file through every path, agreeing row by row.

A file whose rows each hold one tricky value goes through training's loader, `fedcare
site check`, `fedcare evaluate` (``score_files``), the inference service's request check
(the request JSON decoded and parsed as the service does, then the model's data kind),
`fedcare predict` (its reader, then the same request path) and the SDK's homomorphic
encoding. Every path must accept and refuse the same rows, and read the accepted ones
to the same model inputs.
"""

from __future__ import annotations

import json
import re
import secrets

import numpy as np
import pytest

from cli.predict import read_rows
from deploy.site_check import check_site_data
from models.data.features import FeatureEncoder
from models.data.kinds.base import RowError
from models.data.kinds.registry import load_schema
from models.data.tables import SiteDataError, load_site_table
from models.predictor import Predictor
from protocol import inference as wire
from server.scoring import ScoringError, score_files
from tests.conftest import SCHEMA_TOML, ward_registry

SCHEMA = SCHEMA_TOML + '\n[features.ward]\ntype = "categorical"\ncategories = ["1", "2", "3"]\n'
HEADER = "age,sex,smoker,ward,outcome"
GOOD = ["34", "F", "0", "1"]
# Each row changes one cell of a good row: (column index, cell text, accepted?).
VARIANTS = [
    (0, "61", True),
    (0, " 61 ", True),
    (0, "6.1e1", True),
    (0, "+61.0", True),
    (0, "1_20", False),
    (0, "0x10", False),
    (0, "1e200", False),
    (0, "inf", False),
    (0, "-5", False),
    (0, "", False),
    (0, "NA", False),
    (0, "34,5", False),
    (0, "٣٤", False),
    (1, "M", True),
    (1, " M", False),
    (1, "m", False),
    (1, "X", False),
    (1, "NA", False),
    (2, "1", True),
    (2, "y", True),
    (2, "n", True),
    (2, "t", True),
    (2, "F", True),
    (2, "1.0", True),
    (2, "0.0", True),
    (2, "TRUE", True),
    (2, "yes", True),
    (2, "No", True),
    (2, "2", False),
    (2, "0.5", False),
    (2, "maybe", False),
    (3, "2", True),
    (3, "2.0", True),
    (3, "3", True),
    (3, "4", False),
    (3, "1.5", False),
    (3, "one", False),
]
ROW_OF = {i + 2: variant for i, variant in enumerate(VARIANTS)}  # file row → variant
ACCEPTED = {row for row, (_, _, ok) in ROW_OF.items() if ok}


@pytest.fixture
def ward(tmp_path):
    """The file, its schema and a registered model of that schema."""
    schema_path = tmp_path / "schema.toml"
    schema_path.write_text(SCHEMA)
    lines = [HEADER]
    for i, (column, text, _) in enumerate(VARIANTS):
        cells = list(GOOD)
        cells[column] = f'"{text}"' if "," in text else text
        lines.append(",".join([*cells, str(i % 2)]))
    data = tmp_path / "site.csv"
    data.write_text("\n".join(lines) + "\n")
    registry = ward_registry(tmp_path / "registry", schema_path, (1,))
    return data, schema_path, registry.get("ward")


def _rows_in(messages: list[str]) -> set[int]:
    """The file rows the messages name."""
    return {int(m) for text in messages for m in re.findall(r"\brow (\d+)\b", text)}


def _service_reads(predictor: Predictor, row: dict) -> np.ndarray | None:
    """One row through the service's path: request JSON, decoded, parsed, checked.

    None when the service refuses it (a 422: ``ApiError`` from the wire's checks,
    ``RowError`` from the data kind's).
    """
    body = wire.build_request([row], secrets.token_hex(16), 0, bytes(16))
    decoded = wire.decode_request(wire.dumps(body))
    try:
        return predictor.encode_rows(wire.parse_rows(decoded, 10))[0]
    except (RowError, wire.ApiError):
        return None


def _as_json_value(text: str):
    """The value a client sending JSON would write for a cell: a number when it is one."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, int | float) and not isinstance(value, bool) else text


def test_every_path_accepts_the_same_rows_and_reads_them_alike(ward):
    data, schema_path, version = ward
    schema = load_schema(schema_path)
    predictor = Predictor.from_version(version)
    encoder = FeatureEncoder(schema, predictor.standardization)

    # training's loader: every refused row is listed
    with pytest.raises(SiteDataError) as caught:
        load_site_table(data, schema)
    assert _rows_in([str(p) for p in caught.value.problems]) == set(ROW_OF) - ACCEPTED
    # site check without a site.toml
    assert _rows_in(check_site_data(data, schema_path, min_rows=1).problems) == (
        set(ROW_OF) - ACCEPTED
    )
    # evaluate
    with pytest.raises(ScoringError) as refused:
        score_files(version, [data])
    assert _rows_in([str(refused.value)]) == set(ROW_OF) - ACCEPTED

    # the service, predict and the SDK's HE encoding, row by row
    patients = read_rows(data, schema.feature_names)
    metadata_schema = schema.to_dict()["features"]
    for line, cells in zip(patients.lines, patients.rows, strict=True):
        ok = line in ACCEPTED
        as_predict_sends = _service_reads(predictor, cells)
        as_json = _service_reads(predictor, {k: _as_json_value(v) for k, v in cells.items()})
        assert (as_predict_sends is not None) == ok, (line, ROW_OF[line])
        assert (as_json is not None) == ok, (line, ROW_OF[line])
        try:
            he = wire.encode_he_rows(metadata_schema, [cells])
        except wire.ApiError:
            he = None
        assert (he is not None) == ok, (line, ROW_OF[line])

    # the accepted rows alone: the same model inputs everywhere, the same predictions
    kept = data.with_name("kept.csv")
    lines = data.read_text().splitlines()
    kept.write_text("\n".join([lines[0], *(lines[r - 1] for r in sorted(ACCEPTED))]) + "\n")
    table = load_site_table(kept, schema)
    trained = encoder.transform(table.frame)
    kept_rows = read_rows(kept, schema.feature_names).rows
    served = np.stack([_service_reads(predictor, row) for row in kept_rows])
    np.testing.assert_allclose(served, trained, rtol=1e-6)
    he_matrix = np.array(wire.encode_he_rows(metadata_schema, kept_rows))
    scale = predictor.standardization
    he_matrix[:, 0] = (he_matrix[:, 0] - scale.mean["age"]) / scale.std["age"]
    np.testing.assert_allclose(he_matrix, trained, rtol=1e-6)
    scores = score_files(version, [kept])
    assert [p.row for p in scores.predictions] == list(range(2, len(ACCEPTED) + 2))
    assert [p.prediction for p in scores.predictions] == predictor.predict_rows(kept_rows)
