"""File helpers: atomic writes leave the old file or the new one (never half of one, never a stray .tmp, never
another writer's), check_writable's messages, read_text's UTF-8 contract (a BOM dropped, anything else named by
line and byte)."""
import hashlib
import os

import pytest

from replication.files import NotTextError, atomic_write, atomic_write_text, check_writable, read_text, sha1


def test_an_interrupted_atomic_write_leaves_the_old_file_and_a_finished_one_no_tmp(tmp_path):
    """Resuming trusts the files that exist: a writer that dies half-way must not have touched the target."""
    target = tmp_path / "new" / "result.json"
    atomic_write_text(target, "old")

    def dies(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, dies)
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.json"]  # the half-written one removed
    atomic_write(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new" and sorted(p.name for p in target.parent.iterdir()) == ["result.json"]


def test_atomic_write_hands_the_writer_a_new_tmp_name_beside_the_target(tmp_path):
    seen = []
    for _ in range(2):
        atomic_write(tmp_path / "a" / "b.csv", lambda tmp: (seen.append(tmp), tmp.write_bytes(b"x")))
    assert all(tmp.parent == tmp_path / "a" and tmp.name.startswith("b.csv.") and tmp.suffix == ".tmp"
               for tmp in seen)
    assert seen[0] != seen[1]


def test_two_writers_of_one_file_each_rename_their_own(tmp_path):
    """Two `prepare` runs on one --out both wrote prepare_settings.json through the one name <name>.tmp: the first
    to finish renamed the other's half-written file, whose own rename then failed ("No such file or directory")."""
    target = tmp_path / "prepare_settings.json"

    def slow(tmp):
        tmp.write_text("first")
        atomic_write_text(target, "second")  # the other process writes meanwhile

    atomic_write(target, slow)
    assert target.read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_atomic_write_text_is_utf8_whatever_the_locale(tmp_path):
    atomic_write_text(tmp_path / "t.txt", "Kärkkäinen – ✓\n")
    assert (tmp_path / "t.txt").read_bytes() == "Kärkkäinen – ✓\n".encode("utf-8")


def test_read_text_drops_a_bom_and_names_line_and_byte_of_other_encodings(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes(b"\xef\xbb\xbffile,age\nx,1\n")
    assert read_text(path, "a label CSV") == "file,age\nx,1\n"
    path.write_bytes("file,age\nx,1\nMüller,2\n".encode("latin-1"))
    with pytest.raises(NotTextError) as err:
        read_text(path, "a label CSV")
    assert str(err.value) == (f"{path} line 3: byte 0xfc is not UTF-8 text; expected a label CSV, not a binary "
                              "file or a copy saved in another encoding")
    assert isinstance(err.value, ValueError)  # the commands' one-line error handling catches ValueError


def test_check_writable_messages(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir").mkdir()
    check_writable(tmp_path / "adir", "folder")
    check_writable(tmp_path / "adir" / "new" / "deeper", "folder")
    check_writable(tmp_path / "adir" / "new" / "x.csv", "file")
    check_writable(tmp_path / "afile", "file")  # an existing file is overwritten
    with pytest.raises(IsADirectoryError, match=f"^{tmp_path / 'adir'} is a folder; expected a file$"):
        check_writable(tmp_path / "adir", "file")
    with pytest.raises(NotADirectoryError, match=f"^{tmp_path / 'afile'} is a file; expected a folder$"):
        check_writable(tmp_path / "afile", "folder")
    with pytest.raises(NotADirectoryError, match=f"^{tmp_path / 'afile' / 'x'}: {tmp_path / 'afile'} is a file"):
        check_writable(tmp_path / "afile" / "x", "file")
    # relative paths: the same messages (the folder is looked up from the working directory)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NotADirectoryError, match="^afile is a file; expected a folder$"):
        check_writable("afile", "folder")
    with pytest.raises(NotADirectoryError, match=f"^afile/x/y: {tmp_path / 'afile'} is a file, not a folder$"):
        check_writable("afile/x/y", "folder")


def test_check_writable_asks_for_write_and_search_permission(tmp_path, monkeypatch):
    """Making an entry in a folder needs both w and x on it; root passes os.access anyway, so it is staged."""
    asked = []
    monkeypatch.setattr(os, "access", lambda path, mode: asked.append((path, mode)) or False)
    with pytest.raises(PermissionError, match=f"^{tmp_path / 'new' / 'f'}: no permission to write in {tmp_path}$"):
        check_writable(tmp_path / "new" / "f", "file")
    assert asked == [(tmp_path, os.W_OK | os.X_OK)]


def test_sha1_is_the_hash_of_the_whole_file(tmp_path):
    data = os.urandom((1 << 20) + 7)  # more than one read chunk
    (tmp_path / "blob").write_bytes(data)
    assert sha1(tmp_path / "blob") == hashlib.sha1(data).hexdigest()
