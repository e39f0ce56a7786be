"""Readers: the real label files reproduce their published counts, and the
native-format quirks (CRLF, quoted names, odd UTKFace names, -1 = missing) are handled."""
from collections import Counter
from pathlib import Path

import pytest

from replication.data.readers import (ReadResult, parse_celebamask_attributes, parse_identity_meta, read_celebahq,
                                      parse_loose_boxes, parse_mivia_ages, parse_utkface_name, read_fairface,
                                      read_lagenda, read_rafdb, read_rafdb_list, read_utkface,
                                      read_utkface_names, read_vggface2, read_vggface2_list)
from replication.labels import MISSING, age_to_group

REF = Path(__file__).resolve().parents[2] / "shared" / "reference-labels"
if not REF.is_dir():
    REF = Path("/work/shared/reference-labels")
needs_ref = pytest.mark.skipif(not REF.is_dir(), reason="shared/reference-labels not available")


def _counts(records, task, n):
    c = Counter(getattr(r, task) for r in records)
    return [c[i] for i in range(n)]


@needs_ref
def test_fairface_real_counts():
    res = read_fairface(REF / "fairface")
    assert res.rows_read == 86_744 + 10_954 and not res.skipped
    train = [r for r in res.records if r.split == "train"]
    val = [r for r in res.records if r.split == "val"]
    assert len(train) == 86_744 and len(val) == 10_954
    # FairFace train counts per age group (verified against the real CSVs); "more than 70" is class 8
    assert _counts(train, "age", 9) == [1792, 10408, 9103, 25598, 19250, 10744, 6228, 2779, 842]
    assert _counts(train, "gender", 2) == [45_986, 40_758]
    assert _counts(val, "age", 9) == [199, 1356, 1181, 3300, 2330, 1353, 796, 321, 118]
    assert _counts(val, "gender", 2) == [5_792, 5_162]
    assert train[0].name == "train/1.jpg" and train[0].key == "train_1"
    assert all(r.emotion == MISSING and r.box is None for r in res.records)


@needs_ref
def test_rafdb_real_counts():
    res = ReadResult("rafdb")
    read_rafdb_list(REF / "raf-db" / "list_patition_label.txt", Path("img"), res)
    assert res.rows_read == 15_339 and not res.skipped
    train = [r for r in res.records if r.split == "train"]
    test = [r for r in res.records if r.split == "test"]
    assert len(train) == 12_271 and len(test) == 3_068
    assert _counts(train, "emotion", 7) == [1290, 281, 717, 4772, 1982, 705, 2524]
    assert _counts(test, "emotion", 7) == [329, 74, 160, 1185, 478, 162, 680]
    assert train[0].emotion == 4  # "train_00001.jpg 5" -> Sad (ids 1..7 -> 0..6)


@needs_ref
def test_utkface_real_names():
    names = (REF / "utkface" / "UTKFace_aligned_cropped_filenames.txt").read_text().splitlines()
    res = ReadResult("utkface")
    read_utkface_names(names, Path("UTKFace"), res)
    assert res.rows_read == 23_708 and not res.skipped  # the malformed official names still parse
    assert _counts(res.records, "age", 9) == [1605, 1457, 1531, 7344, 4537, 2245, 2299, 1318, 1372]
    assert _counts(res.records, "gender", 2) == [12_391, 11_317]
    assert len({r.key for r in res.records}) == 23_708


@needs_ref
def test_vggface2_real_identities():
    meta = parse_identity_meta(REF / "vggface2" / "identity_meta.csv")
    assert len(meta) == 9_131
    test_ids = {k: g for k, (g, flag) in meta.items() if flag == 0}
    assert len(test_ids) == 500 and Counter(test_ids.values()) == {0: 298, 1: 202}
    res = ReadResult("vggface2")
    read_vggface2_list(REF / "vggface2" / "test_list.txt", meta, Path("test"), res)
    assert res.rows_read == 169_396 and not res.skipped
    assert len({r.name.split("/")[0] for r in res.records}) == 500
    assert _counts(res.records, "gender", 2) == [101_752, 67_644]
    assert all(r.age == MISSING for r in res.records)  # no MIVIA file given


@needs_ref
def test_celebamask_real_attributes():
    genders = parse_celebamask_attributes(REF / "celeba-hq" / "CelebAMask-HQ-attribute-anno.txt")
    assert len(genders) == 30_000 and Counter(genders.values()) == {0: 11_057, 1: 18_943}
    assert genders["0.jpg"] == 1  # first row: Male = -1


def test_utkface_name_parser():
    assert parse_utkface_name("39_1_20170116174525125.jpg.chip.jpg") == (39, 1)  # no race field
    assert parse_utkface_name("55_0_0_20170116232725357jpg.chip.jpg") == (55, 0)  # missing dot
    assert parse_utkface_name("24_0_1_20170116220224657 .jpg.chip.jpg") == (24, 0)  # space
    assert parse_utkface_name("unlabelled.jpg") is None
    assert parse_utkface_name("30_3_0_2017.jpg") is None  # gender must be 0/1


def test_lagenda_rows(tmp_path):
    (tmp_path / "lagenda_annotation.csv").write_text(
        "img_name,age,gender,face_x0,face_y0,face_x1,face_y1,person_x0,person_y0,person_x1,person_y1\n"
        "lag_benchmark/a.jpg.jpg,30,M,10,20,50,70,0,0,90,160\n"
        "lag_benchmark/a.jpg.jpg,-1,-1,60,20,90,60,-1,-1,-1,-1\n"
        "lag_benchmark/b.jpg.jpg,71,F,-1,-1,-1,-1,5,5,80,80\n"
        "lag_benchmark/b.jpg.jpg,2,F,1,2,3,4,-1,-1,-1,-1\n"
        "lag_benchmark/c.jpg.jpg,40,X,1,2,3,4,-1,-1,-1,-1\n"
        "lag_benchmark/c.jpg.jpg,-1,M,1,2,3,4,-1,-1,-1,-1\n"
        "\n"  # a blank line: DictReader skips it, the line numbers below must not
        "lag_benchmark/d.jpg.jpg,25,F,1,2\n"  # truncated row: DictReader fills None
        "lag_benchmark/e.jpg.jpg,abc,F,1,2,3,4,-1,-1,-1,-1\n"
        "lag_benchmark/f.jpg.jpg,30,M,10,20,50,70,0,0,90,160,7\n")  # a field too many: columns may be shifted
    res = read_lagenda(tmp_path)
    assert res.rows_read == 9
    assert [(r.age, r.gender, r.box, r.key) for r in res.records] == [
        (4, 0, (10.0, 20.0, 50.0, 70.0), "a_2"), (0, 1, (1.0, 2.0, 3.0, 4.0), "b_5")]
    assert {k: len(v) for k, v in res.skipped.items()} == {
        "not_annotated": 1, "no_face_box": 1, "unknown_label": 4, "missing_age": 1}
    header = ("expected the header's 11 (img_name,age,gender,face_x0,face_y0,face_x1,face_y1,person_x0,person_y0,"
              "person_x1,person_y1)")
    assert res.skipped["unknown_label"] == ["lag_benchmark/c.jpg.jpg (line 6) gender='X'",
                                            f"lag_benchmark/d.jpg.jpg (line 9): 5 fields, {header}",
                                            "lag_benchmark/e.jpg.jpg (line 10) age='abc' box=('1', '2', '3', '4')",
                                            f"lag_benchmark/f.jpg.jpg (line 11): 12 fields, {header}"]


def test_rafdb_manual_gender_and_boxes(tmp_path):
    basic = tmp_path / "basic"
    (basic / "EmoLabel").mkdir(parents=True)
    (basic / "EmoLabel" / "list_patition_label.txt").write_text(
        "train_00001.jpg 4\ntrain_00002.jpg 7\ntrain_00003.jpg 1\ntrain_00004.jpg 5\ntest_0001.jpg 2\ntest_0002.jpg 9")
    manual, boxes = basic / "Annotation" / "manual", basic / "Annotation" / "boundingbox"
    manual.mkdir(parents=True)
    boxes.mkdir(parents=True)
    marks = "1.0\t2.0\n" * 5
    for stem, gender in (("train_00001", 1), ("train_00002", 2), ("test_0001", 0)):
        (manual / f"{stem}_manu_attri.txt").write_text(f"{marks}{gender}\n0\n2\n")
    (manual / "train_00004_manu_attri.txt").write_text(f"{marks}female\n0\n2\n")  # not 0/1/2
    (boxes / "train_00001_boundingbox.txt").write_text("10.5 20 30 40.25\n")
    res = read_rafdb(tmp_path)
    got = {r.key: (r.split, r.emotion, r.gender, r.box) for r in res.records}
    assert got == {"train_00001": ("train", 3, 1, (10.5, 20.0, 30.0, 40.25)),
                   "train_00002": ("train", 6, MISSING, None),
                   "train_00003": ("train", 0, MISSING, None),
                   "train_00004": ("train", 4, MISSING, None),
                   "test_0001": ("test", 1, 0, None)}
    assert res.notes["gender_unsure"] == ["train_00002.jpg"]
    assert res.notes["gender_annotation_missing"] == ["train_00003.jpg"]
    assert res.notes["gender_annotation_malformed"] == [f"{manual / 'train_00004_manu_attri.txt'}: line 6 is not 0, 1 "
                                                        "or 2"]
    assert res.skipped["unknown_label"] == ["test_0002.jpg 9"]


def test_rafdb_without_manual_folder_is_an_error(tmp_path):
    """Without the gender files every training row would be removed (unknown gender): refuse."""
    (tmp_path / "basic" / "EmoLabel").mkdir(parents=True)
    (tmp_path / "basic" / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 4\n")
    with pytest.raises(FileNotFoundError) as e:
        read_rafdb(tmp_path)
    assert str(tmp_path / "basic" / "Annotation" / "manual") in str(e.value)
    assert "gender" in str(e.value) and "_manu_attri.txt" in str(e.value)


def test_utkface_prefers_in_the_wild_parts(tmp_path):
    """§2.7.2's 24,103 images are the in-the-wild release: part1..3 first, the aligned chips noted."""
    both, chips = tmp_path / "both", tmp_path / "chips"
    for root, folder, name in ((both, "part1", "30_0_0_20170101.jpg"), (both, "part2", "5_1_2_20170102.jpg"),
                               (both, "UTKFace", "70_1_0_20170103.jpg.chip.jpg"),
                               (chips, "UTKFace", "70_1_0_20170103.jpg.chip.jpg")):
        (root / folder).mkdir(parents=True)
        (root / folder / name).write_bytes(b"")  # readers parse names only
    wild = read_utkface(both)
    assert [(r.image, r.age, r.gender) for r in wild.records] == [
        (both / "part1" / "30_0_0_20170101.jpg", 4, 0), (both / "part2" / "5_1_2_20170102.jpg", 1, 1)]
    assert not wild.notes
    aligned = read_utkface(chips)
    assert [(r.key, r.age, r.gender) for r in aligned.records] == [("70_1_0_20170103", 8, 1)]
    [note] = aligned.notes["aligned_chips_used"]
    assert "23,708" in note and "24,103" in note
    with pytest.raises(FileNotFoundError, match="part1"):
        read_utkface(tmp_path / "empty")


def test_loose_boxes_errors_name_file_and_line(tmp_path):
    path = tmp_path / "loose_bb_test.csv"
    path.write_text("NAME_ID,X,Y,W,H\nn000001/0001_01,10,20,30,40\n")
    assert parse_loose_boxes(path) == {"n000001/0001_01.jpg": (10.0, 20.0, 40.0, 60.0)}
    for bad_row in ("n000001/0002_01,10,,30,40", "n000001/0002_01,10,20"):  # empty value, short row
        path.write_text(f"NAME_ID,X,Y,W,H\nn000001/0001_01,10,20,30,40\n{bad_row}\n")
        with pytest.raises(ValueError, match="four numbers X,Y,W,H") as e:
            parse_loose_boxes(path)
        assert str(e.value).startswith(f"{path} line 3:")


def test_identity_meta_crlf_quotes_and_mivia(tmp_path):
    meta = tmp_path / "identity_meta.csv"
    meta.write_bytes(b'Class_ID, Name, Sample_Num, Flag, Gender\r\n'
                     b'n000001," ""14th_Dalai_Lama""",2,0, m\r\nn000002," ""A, B""",1,1, f\r\n')
    assert parse_identity_meta(meta) == {"n000001": (0, 0), "n000002": (1, 1)}
    ages = tmp_path / "test.age_detected.csv"
    ages.write_text("n000001/0001_01.jpg,29.995\nn000001/0002_01.jpg, 70.0\n")
    assert parse_mivia_ages(ages) == {"n000001/0001_01.jpg": 29.995, "n000001/0002_01.jpg": 70.0}
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b'Class_ID, Name, Sample_Num, Flag, Gender\r\nn000003,"x",1,0, u\r\n')
    with pytest.raises(ValueError, match="line 2"):
        parse_identity_meta(bad)


def test_celebamask_attribute_format_errors(tmp_path):
    path = tmp_path / "attr.txt"
    path.write_text("2\nSmiling Male\n0.jpg  1 -1\n1.jpg  -1 1\n")
    assert parse_celebamask_attributes(path) == {"0.jpg": 1, "1.jpg": 0}
    path.write_text("3\nSmiling Male\n0.jpg  1 -1\n1.jpg  -1 1\n")
    with pytest.raises(ValueError, match="announces 3"):
        parse_celebamask_attributes(path)
    path.write_text("2\nSmiling Male\n0.jpg  1 0\n1.jpg  -1 1\n")
    with pytest.raises(ValueError, match="line 3"):
        parse_celebamask_attributes(path)


def test_lagenda_non_finite_values_are_counted(tmp_path):
    """"nan"/"inf" parse as floats: an age is counted as unknown_label, a box as no_face_box (no crash)."""
    (tmp_path / "lagenda_annotation.csv").write_text(
        "img_name,age,gender,face_x0,face_y0,face_x1,face_y1\n"
        "lag_benchmark/a.jpg.jpg,nan,M,10,20,50,70\n"
        "lag_benchmark/a.jpg.jpg,inf,F,10,20,50,70\n"
        "lag_benchmark/b.jpg.jpg,30,F,10,20,nan,70\n"
        "lag_benchmark/b.jpg.jpg,30,F,10,20,50,inf\n"
        "lag_benchmark/c.jpg.jpg,30,M,10,20,10,70\n")  # zero width
    res = read_lagenda(tmp_path)
    assert res.rows_read == 5 and not res.records
    assert res.skipped == {"unknown_label": ["lag_benchmark/a.jpg.jpg (line 2) age='nan'",
                                             "lag_benchmark/a.jpg.jpg (line 3) age='inf'"],
                           "no_face_box": ["lag_benchmark/b.jpg.jpg (line 4)", "lag_benchmark/b.jpg.jpg (line 5)",
                                           "lag_benchmark/c.jpg.jpg (line 6)"]}


def test_fairface_bad_rows_are_counted_with_their_line(tmp_path):
    """Like LAGENDA's, each skipped FairFace row names its line; a row with another number of fields than the
    header (its columns may be shifted) is skipped too, even when its age and gender look valid."""
    (tmp_path / "fairface_label_train.csv").write_text(
        "file,age,gender,race,service_test\n"
        "train/1.jpg,20-29,Male,White,True\n"
        "train/2.jpg,03-Sep,Female,White,True\n"
        "train/3.jpg,30-39,Female,Indian,False,x,y,z\n"
        "train/4.jpg,30-39\n")
    (tmp_path / "fairface_label_val.csv").write_text("file,age,gender,race,service_test\n")
    res = read_fairface(tmp_path)
    assert res.rows_read == 4 and [r.name for r in res.records] == ["train/1.jpg"]
    header = "expected the header's 5 (file,age,gender,race,service_test)"
    assert res.skipped == {"unknown_label": ["train/2.jpg (line 3) age='03-Sep', gender='Female'",
                                             f"train/3.jpg (line 4): 8 fields, {header}",
                                             f"train/4.jpg (line 5): 2 fields, {header}"]}


def _message(call, *args) -> str:
    with pytest.raises(ValueError) as e:
        call(*args)
    return str(e.value)


def test_rafdb_box_errors_name_file_and_line(tmp_path):
    basic = tmp_path / "basic"
    for sub in ("EmoLabel", "Annotation/manual", "Annotation/boundingbox"):
        (basic / sub).mkdir(parents=True)
    (basic / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 4\n")
    (basic / "Annotation" / "manual" / "train_00001_manu_attri.txt").write_text("1\t2\n" * 5 + "0\n0\n2\n")
    box = basic / "Annotation" / "boundingbox" / "train_00001_boundingbox.txt"
    box.write_text("10 20\nn/a 40\n")
    assert _message(read_rafdb, tmp_path) == f"{box} line 2: expected 4 numbers x0 y0 x1 y1, got 'n/a'"
    box.write_text("10 20 30\n")
    assert _message(read_rafdb, tmp_path) == f"{box}: expected 4 numbers x0 y0 x1 y1, found 3"


def test_identity_meta_bad_flag_and_mivia_non_finite_age(tmp_path):
    bad = tmp_path / "identity_meta.csv"
    bad.write_bytes(b'Class_ID, Name, Sample_Num, Flag, Gender\r\nn000003,"x",1,yes, m\r\n')
    assert _message(parse_identity_meta, bad).startswith(f"{bad} line 2: expected Flag 0 (test) or 1 (train), got ")
    ages = tmp_path / "test.age_detected.csv"
    ages.write_text("n000001/0001_01.jpg,29.995\nn000001/0002_01.jpg,nan\n")
    assert _message(parse_mivia_ages, ages).startswith(f"{ages} line 2: last column is not an age")


def test_identity_meta_empty_file_or_bad_header_names_the_expected_header(tmp_path):
    meta = tmp_path / "identity_meta.csv"
    meta.write_text("")
    assert _message(parse_identity_meta, meta) == (
        f"{meta} line 1: expected the header Class_ID, Name, Sample_Num, Flag, Gender, the file is empty")
    meta.write_text("Class_ID,Name,Flag,Gender\nn000001,A,0,m\n")
    assert _message(parse_identity_meta, meta) == (
        f"{meta} line 1: expected the header Class_ID, Name, Sample_Num, Flag, Gender, "
        "got ['Class_ID', 'Name', 'Flag', 'Gender']")


def test_identity_meta_malformed_rows_stop_with_line_and_expected_form(tmp_path):
    """A quote left open must not merge the next identity into the row (its gender read as another's, the
    identity lost as unknown_identity); neither may a row with other fields or columns out of form."""
    meta = tmp_path / "identity_meta.csv"
    head = b"Class_ID, Name, Sample_Num, Flag, Gender\r\n" + b'n000008," ""A""",15,0, f\r\n'
    expected = "expected one identity per line: Class_ID, Name, Sample_Num, Flag, Gender"
    meta.write_bytes(head + b'n000022,"broken\r\nn000029," ""B""",15,0, m\r\nn000036," ""C""",15,0, f\r\n')
    assert _message(parse_identity_meta, meta) == (
        f"{meta} line 3: the row runs on to line 4 (a quote left open?); {expected}")
    meta.write_bytes(head + b'n000022,"broken\r\n')  # open at the end of the file: the row is short
    assert _message(parse_identity_meta, meta) == (
        f"{meta} line 3: 2 fields, {expected}; got ['n000022', 'broken\\r\\n']")
    meta.write_bytes(head + b'n000022," ""B""",15,0, f, extra\r\n')
    assert _message(parse_identity_meta, meta).startswith(f"{meta} line 3: 6 fields, {expected}; got ")
    meta.write_bytes(head + b'22," ""B""",15,0, f\r\n')
    assert _message(parse_identity_meta, meta).startswith(
        f"{meta} line 3: expected Class_ID nXXXXXX (n and 6 digits), got ['22', ")
    meta.write_bytes(head + b'n000022," ""B""",15,0, female\r\n')
    assert _message(parse_identity_meta, meta).startswith(f"{meta} line 3: expected Gender m/f, got ")
    # an open quote that swallows the rest of a large file trips csv's field size limit: still file and line
    meta.write_bytes(head + b'n000022,"broken\r\n' + b"n000029, B, 15, 0, m\r\n" * 8000)
    assert _message(parse_identity_meta, meta) == (
        f"{meta} line 3: field larger than field limit (131072); {expected}")


def _vggface2_folder(root, age_lines):
    (root / "identity_meta.csv").write_text("Class_ID, Name, Sample_Num, Flag, Gender\nn000001,\"A\",2,0, f\n")
    (root / "test_list.txt").write_text("n000001/0001_01.jpg\nn000001/0002_01.jpg\n")
    (root / "test.age_detected.csv").write_text("".join(f"{line}\n" for line in age_lines))
    return root


def test_vggface2_age_file_matching_no_image_is_an_error(tmp_path):
    """A present MIVIA file whose keys match no test image (another prefix or release) would leave
    the age test set empty with only notes; partial coverage stays a counted note."""
    folder = _vggface2_folder(tmp_path, ["test/n000001/0001_01.jpg,30.5", "test/n000001/0002_01.jpg,41"])
    assert _message(read_vggface2, folder).startswith(
        f"{folder / 'test.age_detected.csv'}: 0 of its 2 keys match the 2 images of {folder / 'test_list.txt'} "
        "(age file key e.g. 'test/n000001/0001_01.jpg', test_list.txt e.g. 'n000001/0001_01.jpg')")
    # the message states the expected format itself (it once cited a file users do not have)
    assert _message(read_vggface2, folder).endswith(
        "expected column 0 to be the test_list path nXXXXXX/XXXX_XX.jpg and the last column "
        "the age in years, as in MIVIA's test.age_detected.csv")
    res = read_vggface2(_vggface2_folder(tmp_path, ["n000001/0001_01.jpg,30.5"]))
    assert [r.age for r in res.records] == [4, MISSING]
    assert res.notes["age_missing"] == ["n000001/0002_01.jpg"]


def test_celebamask_header_errors_name_the_line(tmp_path):
    path = tmp_path / "attr.txt"
    path.write_text("two\nSmiling Male\n0.jpg  1 -1\n")
    assert _message(parse_celebamask_attributes, path) == f"{path} line 1: expected the number of images, got 'two'"
    path.write_text("1\nSmiling Young\n0.jpg  1 -1\n")
    assert _message(parse_celebamask_attributes, path) == f"{path} line 2: expected the attribute names, including Male"


def test_celebahq_without_either_layout_names_both(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        read_celebahq(tmp_path)
    assert str(e.value) == (f"CelebA-HQ not found: expected {tmp_path / 'celeba_hq'}/{{train,val}}/{{male,female}}/ "
                            f"(StarGAN v2, the split Table 3.2 fits) or "
                            f"{tmp_path / 'CelebAMask-HQ' / 'CelebAMask-HQ-attribute-anno.txt'}")


@pytest.mark.parametrize("read, name, columns", [
    (read_fairface, "fairface_label_train.csv", "file, age, gender"),
    (read_lagenda, "lagenda_annotation.csv", "img_name, age, gender, face_x0, face_y0, face_x1, face_y1"),
    (lambda folder: parse_loose_boxes(folder / "loose_bb_test.csv"), "loose_bb_test.csv", "NAME_ID, X, Y, W, H"),
])
def test_an_empty_label_csv_is_said_to_be_empty(tmp_path, read, name, columns):
    # it was "header None lacks columns [...]"
    (tmp_path / name).write_bytes(b"")
    assert _message(read, tmp_path) == (f"{tmp_path / name}: the file is empty; expected a header with the "
                                        f"columns {columns}")


_FAIRFACE_ROWS = ("file,age,gender,race,service_test\ntrain/1.jpg,20-29,Male,White,True\n"
                  "train/2.jpg,3-9,Female,Black,False\n")


def test_a_label_file_in_another_encoding_names_the_file_line_and_byte(tmp_path):
    """A Latin-1 or UTF-16 re-save (a spreadsheet's) used to end in the bare codec message, naming no file, and
    its reading depended on the machine's locale; a UTF-8 byte-order mark is dropped, so the header still holds
    'file'. The real label files are all UTF-8 (identity_meta.csv has non-ASCII names)."""
    train, val = tmp_path / "fairface_label_train.csv", tmp_path / "fairface_label_val.csv"
    val.write_text("file,age,gender,race,service_test\n", encoding="utf-8")
    train.write_text(_FAIRFACE_ROWS, encoding="utf-8")
    plain = read_fairface(tmp_path).records
    assert [(r.name, r.age, r.gender) for r in plain] == [("train/1.jpg", 3, 0), ("train/2.jpg", 1, 1)]
    train.write_bytes(b"\xef\xbb\xbf" + _FAIRFACE_ROWS.encode())  # BOM, as Excel's "CSV UTF-8" saves it
    assert read_fairface(tmp_path).records == plain
    suffix = "is not UTF-8 text; expected the FairFace label CSV as released, not a binary file or a copy saved in " \
             "another encoding"
    train.write_bytes(_FAIRFACE_ROWS.replace("Black", "Noir \xe9").encode("latin-1"))
    assert _message(read_fairface, tmp_path) == f"{train} line 3: byte 0xe9 {suffix}"
    train.write_text(_FAIRFACE_ROWS, encoding="utf-16")
    assert _message(read_fairface, tmp_path) == f"{train} line 1: byte 0xff {suffix}"
    listing = tmp_path / "list_patition_label.txt"
    listing.write_bytes(b"train_00001.jpg 5\ntrain_00002.jpg \x85\n")
    assert _message(read_rafdb_list, listing, tmp_path, ReadResult("rafdb")) == (
        f"{listing} line 2: byte 0x85 is not UTF-8 text; expected the RAF-DB label list as released, not a binary "
        f"file or a copy saved in another encoding")


def test_age_bins_floor_real_valued_ages():
    """MIVIA's VGGFace2 ages are floats: 19.5 years is still "10-19" (§1.2.2's nine groups bin whole years),
    so binning floors; a rounding bin would move every x.5+ age across a boundary."""
    ages = [0, 2.99, 3, 9.99, 10, 19.5, 29.6, 69.99, 70, 116]
    assert [age_to_group(a) for a in ages] == [0, 0, 1, 1, 2, 2, 3, 7, 8, 8]


def test_vggface2_mivia_age_is_the_last_column_and_zero_is_an_age(tmp_path):
    """formats.md §6: column 0 is the test_list path, the *last* column the age (other columns may come
    between); 29.995 is binned 20-29 and a newborn's 0.0 is 0-2, not a missing age."""
    res = read_vggface2(_vggface2_folder(tmp_path, ["n000001/0001_01.jpg,55,29.995", "n000001/0002_01.jpg,41,0.0"]))
    assert [r.age for r in res.records] == [3, 0]
    assert not res.notes["age_missing"]


_OPEN_QUOTE_CASES = [  # reader, label file, header, one row (n = its number), what one row per line is
    (read_fairface, "fairface_label_train.csv", "file,age,gender,race,service_test",
     lambda n: f"train/{n}.jpg,20-29,Male,White,True", "one image per line with the columns file, age, gender"),
    (read_lagenda, "lagenda_annotation.csv", "img_name,age,gender,face_x0,face_y0,face_x1,face_y1",
     lambda n: f"lag_benchmark/{n}.jpg.jpg,30,M,10,20,50,70",
     "one person per line with the columns img_name, age, gender, face_x0, face_y0, face_x1, face_y1"),
    (lambda folder: parse_loose_boxes(folder / "loose_bb_test.csv"), "loose_bb_test.csv", "NAME_ID,X,Y,W,H",
     lambda n: f"n000001/{n:04d}_01,10,20,30,40", "one face box per line with the columns NAME_ID, X, Y, W, H"),
    (lambda folder: parse_mivia_ages(folder / "test.age_detected.csv"), "test.age_detected.csv", None,  # MIVIA's quote character is |
     lambda n: f"n000001/{n:04d}_01.jpg,30.5", "one image per line: its test_list path first, its age in years last"),
]


@pytest.mark.parametrize("read, name, header, row, per_line", _OPEN_QUOTE_CASES)
def test_a_quote_left_open_in_a_label_csv_stops_with_its_line(tmp_path, read, name, header, row, per_line):
    """A stray quote swallowed the rows after it: into one row skipped under the last line's number (a small file),
    or into csv's field size error, naming no file (a large one). Label files hold no line break inside a field:
    the row that runs on stops the run with the line it began on, as identity_meta.csv's does."""
    (tmp_path / "fairface_label_val.csv").write_text("file,age,gender,race,service_test\n")
    quote = "|" if header is None else '"'
    lines = [] if header is None else [header]
    rows = [row(n) for n in range(1, 20)]
    rows[1] = quote + rows[1]
    path = tmp_path / name
    path.write_text("\n".join(lines + rows) + "\n")
    first, last = len(lines) + 2, len(lines) + len(rows)  # the lines of rows[1] and of the last row
    assert _message(read, tmp_path) == (f"{path} line {first}: the row runs on to line {last} (a quote left "
                                        f"open?); expected {per_line}")
    path.write_text("\n".join(lines + rows + [row(n) for n in range(20, 8000)]) + "\n")
    assert _message(read, tmp_path) == (f"{path} line {first}: field larger than field limit (131072); "
                                        f"expected {per_line}")


def test_celebahq_notes_missing_and_unexpected_folders(tmp_path):
    """Its labels are its folder names: images anywhere else (Female/ renamed, a folder a partial unzip left out)
    were never read, nor counted, without a word; the folders are now listed for prepare's warning."""
    for rel in ("train/Female", "train/male", "val/male", "val/female", "test"):
        (tmp_path / "celeba_hq" / rel).mkdir(parents=True)
        (tmp_path / "celeba_hq" / rel / "000001.jpg").write_bytes(b"")
    res = read_celebahq(tmp_path)
    assert res.rows_read == 3 and [r.name for r in res.records] == [
        "train/male/000001.jpg", "val/male/000001.jpg", "val/female/000001.jpg"]
    assert res.notes == {"folder_missing": ["celeba_hq/train/female"],
                         "folder_not_read": ["celeba_hq/test", "celeba_hq/train/Female"]}


def test_mivia_line_1_is_a_header_only_if_it_is_no_image_row_and_negative_ages_are_no_ages(tmp_path):
    """A bad age on line 1 was taken for a header (its image silently without age) while the same on line 17
    stopped the run; a negative age was only a note. Both are now the one error, on any line."""
    ages = tmp_path / "test.age_detected.csv"
    ages.write_text("path,age\nn000001/0001_01.jpg,30.5\n")  # a real header
    assert parse_mivia_ages(ages) == {"n000001/0001_01.jpg": 30.5}
    for lines, line_no in ((["n000008/0002_01.jpg,34.6.41", "n000008/0003_01.jpg,30"], 1),
                           (["n000008/0002_01.jpg,-5"], 1), (["n000008/0002_01.jpg,30", "n000008/0003_01.jpg,-5"], 2)):
        ages.write_text("".join(f"{line}\n" for line in lines))
        assert _message(parse_mivia_ages, ages) == (f"{ages} line {line_no}: last column is not an age (years, 0 or "
                                                    f"more): {lines[line_no - 1].split(',')}")
