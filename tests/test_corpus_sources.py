import zipfile

import pytest

from ml.corpus.filters import FileFilter
from ml.corpus.ingest import extract_units, read_files
from ml.corpus.sources import SourceError, SourceSpec, iter_files, parse_spec
from ml.languages import LANGUAGES, get_language
from tests.conftest import FIXTURES


def test_parse_spec_forms():
    assert parse_spec("dir:/tmp/x").kind == "dir"
    spec = parse_spec("hf:bigcode/the-stack?data_dir=data/python&text_column=content")
    assert (spec.kind, spec.location, spec.option("data_dir")) == ("hf", "bigcode/the-stack", "data/python")
    with pytest.raises(SourceError):
        parse_spec("/no/kind")


def test_filters_classify_each_reason():
    f = FileFilter(max_file_bytes=100, max_line_chars=20)
    assert f.classify(b"x = 1\n") == ("x = 1\n", None)
    assert f.classify(b"\x00\x01abc")[1] == "binary"
    assert f.classify(b"\xff\xfe bad")[1] == "non_utf8"
    assert f.classify(b"x" * 50)[1] == "minified"
    assert f.classify(b"x\n" * 60)[1] == "oversized_file"
    assert f.classify(b"  \n")[1] == "empty"


def test_bad_files_are_counted_and_never_fatal():
    files = read_files("python", parse_spec(f"dir:{FIXTURES / 'python'}"))
    assert files.skipped == {"binary": 1, "non_utf8": 1, "minified": 1}
    units, skipped = extract_units("python", files.rows, workers=1)
    assert skipped["syntax_error"] == 1
    assert skipped["duplicate"] == 1  # pkg/dup.py repeats text.count with other whitespace
    names = {u.name for u in units}
    assert {"distance", "circle_area", "Polygon.perimeter", "Polygon.fetch", "words"} <= names
    assert len({u.id for u in units}) == len(units)
    by_name = {u.name: u for u in units}
    assert by_name["circle_area"].docstring == "Area of a circle of the given radius."
    assert by_name["Polygon.perimeter"].code.startswith("def perimeter(self):")
    assert by_name["Polygon.size"].code.startswith("@property")


def test_parallel_extraction_matches_serial():
    files = read_files("python", parse_spec(f"dir:{FIXTURES / 'python'}"))
    serial, s1 = extract_units("python", files.rows, workers=1)
    parallel, s2 = extract_units("python", files.rows, workers=2)
    assert [u.id for u in serial] == [u.id for u in parallel] and s1 == s2


def test_zip_source_and_limit(tmp_path):
    archive = tmp_path / "src.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/A.java", "class A { int f() { return 1; } }")
        zf.writestr("a/B.java", "class B { }")
        zf.writestr("a/readme.txt", "not java")
    lang = get_language("java")
    got = list(iter_files(SourceSpec("zip", str(archive)), lang.globs, lang.excludes))
    assert [f.path for f in got] == ["a/A.java", "a/B.java"]
    assert len(list(iter_files(SourceSpec("zip", str(archive)), lang.globs, limit=1))) == 1


def test_missing_folder_is_a_clear_error():
    with pytest.raises(SourceError, match="does not exist"):
        list(iter_files(parse_spec("dir:/definitely/not/here"), ("*.py",)))


def test_hf_dataset_source_streams_a_local_dataset(tmp_path):
    import json

    data = tmp_path / "ds"
    data.mkdir()
    with open(data / "train.jsonl", "w") as f:
        for i in range(3):
            f.write(json.dumps({"content": f"def f{i}(x):\n    return x + {i}\n", "path": f"m{i}.py"}) + "\n")
    spec = parse_spec(f"hf:{data}?text_column=content&path_column=path&limit=2")
    got = list(iter_files(spec, ("**/*.py",)))
    assert [f.path for f in got] == ["m0.py", "m1.py"]
    assert got[0].data.startswith(b"def f0")


def test_every_language_is_registered_in_one_place():
    for name, lang in LANGUAGES.items():
        assert lang.name == name and lang.globs
        spec = lang.default_source()
        assert spec.kind in ("dir", "zip", "missing")
        if spec.kind == "missing":
            assert spec.note  # a missing default says why


def test_symlink_loops_and_unreadable_links_are_counted(tmp_path):
    (tmp_path / "ok.py").write_text("def f():\n    return 1\n")
    (tmp_path / "self.py").symlink_to(tmp_path / "self.py")  # a file link that loops
    (tmp_path / "a.py").symlink_to(tmp_path / "b.py")
    (tmp_path / "b.py").symlink_to(tmp_path / "a.py")
    (tmp_path / "gone.py").symlink_to(tmp_path / "nowhere.py")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "up").symlink_to(tmp_path)  # a folder link back to the root
    files = read_files("python", parse_spec(f"dir:{tmp_path}"))
    assert [r.path for r in files.rows] == ["ok.py"]
    assert files.skipped == {"symlink_loop": 4, "broken_symlink": 1}


def test_too_deep_python_is_counted_apart_from_syntax_errors():
    from ml.corpus.ingest import FileRow

    deep = "def f():\n    return " + "1+" * 100_000 + "1\n"
    nested_unit = "class A:\n    def g(self):\n        return self" + ".b" * 100_000 + "\n"
    rows = [FileRow("t", name, "0", len(text), text, None)
            for name, text in (("deep.py", deep), ("attr.py", nested_unit), ("bad.py", "def (:\n"))]
    _, skipped = extract_units("python", rows, workers=1)
    assert skipped == {"too_deep": 2, "syntax_error": 1}
