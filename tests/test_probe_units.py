"""The confinement rule, the stored-value schema, the option bounds and the archive check, without a server."""

from __future__ import annotations

import io
from collections import Counter

import pytest
from starlette.datastructures import UploadFile

from helpers import archive
from mammolabel.confine import confine_train_options, is_inside, model_file
from mammolabel.data.schema import check_info, read_field
from mammolabel.errors import InputError, NotFoundError
from mammolabel.tasks.limits import check_limits
from mammolabel.tasks.routes import check_archive
from mammolabel.tasks.server import filename_problem, json_problem


def test_paths_are_confined_after_symlinks_and_dots(tmp_path):
    root, outside = tmp_path / "store", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    assert is_inside(root / "a.png", [root]) and is_inside(root, [root])
    assert not is_inside(root / ".." / "outside" / "a.png", [root])
    assert not is_inside(root / "link" / "a.png", [root])  # a symlink out of the folder is outside
    assert not is_inside(tmp_path / "store2" / "a.png", [root])  # a sibling sharing the prefix is outside


def test_file_options_name_files_in_the_model_folder(tmp_path):
    (tmp_path / "enc.pt").write_bytes(b"x")
    assert model_file("mine", tmp_path, "checkpoint", must_exist=False) == tmp_path / "mine.pt"
    assert model_file("enc.pt", tmp_path, "init_encoder", must_exist=True) == tmp_path / "enc.pt"
    for bad in ("/etc/passwd", "../x.pt", "a/b.pt", "..", ""):
        with pytest.raises(InputError, match="not a path"):
            model_file(bad, tmp_path, "checkpoint", must_exist=False)
    with pytest.raises(NotFoundError, match="no checkpoint 'gone.pt'"):
        model_file("gone", tmp_path, "init_encoder", must_exist=True)
    given = {"checkpoint": "run1", "pretrained": "auto", "init_encoder": "", "epochs": 3}
    assert confine_train_options(given, tmp_path) == {**given, "checkpoint": str(tmp_path / "run1.pt")}


@pytest.mark.parametrize("info, field", [
    ({"boxes": [[1, 2, 3]]}, "boxes"), ({"boxes": [[5, 0, 1, 3]]}, "boxes"), ({"boxes": [[0.5, 0, 1, 3]]}, "boxes"),
    ({"points": [["a", 1]]}, "points"), ({"radii": [0]}, "radii"), ({"lesion_types": ["mass", 3.5]}, "lesion_types"),
    ({"laterality": "left"}, "laterality"), ({"spacing_mm": True}, "spacing_mm"), ({"finding": "maybe"}, "finding"),
    ({"lock": "mine"}, "lock"), ({"lock": {"ts": float("nan")}}, "lock"),
    ({"uncertainty": {"score": 1, "per_task": []}}, "uncertainty"),
])
def test_a_bad_value_is_refused_on_save_and_counted_on_read(info, field):
    with pytest.raises(InputError, match=f"field '{field}'"):
        check_info(info, "image info")
    counts = Counter()
    assert read_field(info, field, "default", counts, "img") == "default" and counts[f"invalid_{field}"] == 1


def test_good_values_pass_unchanged():
    info = {"boxes": [[1, 2, 3, 4]], "points": [[1.5, 2]], "radii": [3], "laterality": "L", "spacing_mm": 0.1,
            "lock": {"client_id": "a", "ts": 1.0, "strategy": "first"},
            "uncertainty": {"score": 0.2, "per_task": {"x": 0.1}}, "anything": {"else": [1]}}
    assert check_info(info, "info") == {**info, "points": [[1.5, 2.0]], "radii": [3.0]}


def test_input_size_options_have_upper_bounds():
    check_limits({"rows": 2944, "cols": 1920, "batch_size": 4})
    check_limits({"size": "1536x1536", "batch_size": 4, "features": "16,32,64"})
    for bad, message in (({"rows": 5000, "cols": 64}, "at most 4096"), ({"size": "8192x64"}, "4096 pixels a side"),
                         ({"size": 4000, "batch_size": 8}, "per step"), ({"batch_size": 1000}, "at most 256"),
                         ({"features": "16,100000"}, "8192"), ({"epochs": 10**9}, "at most")):
        with pytest.raises(InputError, match=message):
            check_limits(bad)


def _upload(name: str, members: dict[str, bytes], kind: str) -> UploadFile:
    return UploadFile(io.BytesIO(archive(kind, members, tar_mode="w")), filename=name)


def test_archives_are_checked_before_unpacking():
    check_archive(_upload("ok.zip", {"a/b.dcm": b"x"}, "zip"), 1 << 20)
    check_archive(_upload("ok.tar", {"a/b.dcm": b"x"}, "tar"), 1 << 20)
    for upload, message in ((_upload("s.zip", {"a/../../x": b"x"}, "zip"), "outside the session folder"),
                            (_upload("s.tar", {"/etc/x": b"x"}, "tar"), "outside the session folder"),
                            (_upload("s.tar", {"big": b"x" * 2048}, "tar"), "expands to more than"),
                            (_upload("s.zip", {}, "zip"), None)):
        if message is None:
            check_archive(upload, 1024)
        else:
            with pytest.raises(InputError, match=message):
                check_archive(upload, 1024)
    with pytest.raises(InputError, match="not a readable zip"):
        check_archive(UploadFile(io.BytesIO(b"not a zip"), filename="s.zip"), 1024)


def test_parameters_and_file_names_are_checked():
    assert json_problem('{"a": [1, {"b": 2}]}', "params") is None
    assert "32 levels" in json_problem('{"a": ' + "[" * 40 + "]" * 40 + "}", "params")
    assert "too deeply" in json_problem("[" * 100_000 + "]" * 100_000, "params")
    assert "JSON object" in json_problem("[1]", "params") and "not valid JSON" in json_problem("{x", "params")
    assert filename_problem("image.nii.gz") is None
    assert "longer than 200" in filename_problem("a" * 300 + ".png")
    assert "extension" in filename_problem("a." + "b" * 40)


def test_gpu_information_without_the_nvidia_tool_is_a_404(monkeypatch, tmp_path):
    from mammolabel.tasks import routes

    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi here
    monkeypatch.setenv("MAMMOLABEL_ALLOW_LOGS", "true")
    with pytest.raises(NotFoundError, match="nvidia-smi is not installed"):
        routes.gpu_info(user=None)
    monkeypatch.delenv("MAMMOLABEL_ALLOW_LOGS")
    with pytest.raises(routes.ForbiddenError, match="admin role"):
        routes.gpu_info(user=None)
