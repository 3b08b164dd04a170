"""Files and vector stores through the OpenAI client that azure-ai-projects hands out."""

from __future__ import annotations

import time
import uuid

import openai
import pytest

from util import wait_vector_store_ready

TEXT = b"The quick brown fox jumps over the lazy dog.\nPack my box with five dozen liquor jugs.\n"
BINARY = bytes(range(256)) * 40  # every byte value, 10 KiB


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- files ------------------------------------------------------------------------------------


def test_upload_retrieve_content_delete(oai):
    f = oai.files.create(file=("notes.txt", TEXT, "text/plain"), purpose="assistants")
    assert f.id.startswith("file")
    assert f.object == "file"
    assert f.bytes == len(TEXT)
    assert f.filename == "notes.txt"
    assert f.purpose == "assistants"
    assert abs(f.created_at - time.time()) < 300

    got = oai.files.retrieve(f.id)
    assert (got.id, got.bytes, got.filename, got.purpose) == (f.id, len(TEXT), "notes.txt", "assistants")

    assert oai.files.content(f.id).content == TEXT

    deleted = oai.files.delete(f.id)
    assert deleted.id == f.id
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        oai.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        oai.files.content(f.id)


def test_binary_content_round_trips_exactly(oai):
    f = oai.files.create(file=("blob.bin", BINARY, "application/octet-stream"), purpose="assistants")
    assert f.bytes == len(BINARY)
    assert oai.files.content(f.id).content == BINARY


def test_identical_contents_are_separate_files(oai):
    a = oai.files.create(file=("same-a.txt", b"identical bytes", "text/plain"), purpose="assistants")
    b = oai.files.create(file=("same-b.txt", b"identical bytes", "text/plain"), purpose="assistants")
    assert a.id != b.id
    assert oai.files.retrieve(b.id).filename == "same-b.txt"
    oai.files.delete(a.id)
    assert oai.files.content(b.id).content == b"identical bytes"


def test_list_files(oai):
    ids = [oai.files.create(file=(f"list-{i}.txt", TEXT, "text/plain"), purpose="assistants").id for i in range(3)]
    listed = [f.id for f in oai.files.list()]
    assert len(listed) == len(set(listed)), "duplicates while paging"
    for i in ids:
        assert i in listed
    # Newest first by default, and paging with a small limit sees everything.
    pos = [listed.index(i) for i in ids]
    assert pos == sorted(pos, reverse=True), (ids, listed)
    paged = [f.id for f in oai.files.list(limit=2)]
    assert paged == listed
    assert all(f.purpose == "assistants" for f in oai.files.list(purpose="assistants"))
    assert ids[0] in [f.id for f in oai.files.list(purpose="assistants")]


def test_unknown_file_is_404(oai):
    with pytest.raises(openai.NotFoundError) as e:
        oai.files.retrieve("file-doesnotexist0000000000")
    assert "file-doesnotexist0000000000" in str(e.value)  # not for want of a route


# --- vector stores ----------------------------------------------------------------------------


def test_vector_store_lifecycle_and_search(oai):
    f1 = oai.files.create(file=("fox.txt", b"The quick brown fox jumps over the lazy dog.\n", "text/plain"),
                          purpose="assistants")
    f2 = oai.files.create(file=("tide.txt", b"Tide tables for Gothenburg harbour: high water at 06:12.\n", "text/plain"),
                          purpose="assistants")
    name = unique("store")
    vs = oai.vector_stores.create(name=name, file_ids=[f1.id], metadata={"suite": "compat"})
    assert vs.id.startswith("vs_")
    assert vs.object == "vector_store"
    assert vs.name == name
    assert vs.metadata == {"suite": "compat"}
    vs = wait_vector_store_ready(oai, vs.id, expect_files=1)
    assert vs.status == "completed"
    assert vs.file_counts.completed == 1 and vs.file_counts.failed == 0

    assert vs.id in [v.id for v in oai.vector_stores.list()]

    renamed = oai.vector_stores.update(vs.id, name=name + "-renamed")
    assert renamed.name == name + "-renamed"
    assert oai.vector_stores.retrieve(vs.id).name == name + "-renamed"

    # Add a second file, one by one.
    vf = oai.vector_stores.files.create(vs.id, file_id=f2.id)
    assert vf.id == f2.id
    assert vf.vector_store_id == vs.id
    wait_vector_store_ready(oai, vs.id, expect_files=2)
    files = {x.id: x for x in oai.vector_stores.files.list(vs.id)}
    assert set(files) == {f1.id, f2.id}
    assert all(x.status == "completed" for x in files.values()), files
    assert oai.vector_stores.files.retrieve(f2.id, vector_store_id=vs.id).status == "completed"

    # Search finds the chunk that says it.
    results = list(oai.vector_stores.search(vs.id, query="Gothenburg harbour high water"))
    assert results, "search returned nothing"
    top = results[0]
    assert top.file_id == f2.id
    assert top.filename == "tide.txt"
    assert "06:12" in "".join(c.text for c in top.content)
    assert top.score > 0
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)

    fox = list(oai.vector_stores.search(vs.id, query="quick brown fox"))
    assert fox and fox[0].file_id == f1.id

    # Detaching a file removes it from search; the file itself stays.
    gone = oai.vector_stores.files.delete(f2.id, vector_store_id=vs.id)
    assert gone.deleted is True
    assert [x.id for x in oai.vector_stores.files.list(vs.id)] == [f1.id]
    after = list(oai.vector_stores.search(vs.id, query="Gothenburg harbour high water"))
    assert all(r.file_id != f2.id for r in after)
    assert oai.files.retrieve(f2.id).id == f2.id

    deleted = oai.vector_stores.delete(vs.id)
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        oai.vector_stores.retrieve(vs.id)
    assert vs.id not in [v.id for v in oai.vector_stores.list()]


def test_vector_store_file_batches(oai):
    docs = {
        "alpha.txt": b"Alpha document: the password is marmalade.\n",
        "beta.txt": b"Beta document: the meeting is on Thursday.\n",
        "gamma.txt": b"Gamma document: the budget is 300 crowns.\n",
    }
    ids = {oai.files.create(file=(n, d, "text/plain"), purpose="assistants").id: n for n, d in docs.items()}
    vs = oai.vector_stores.create(name=unique("batch"))
    batch = oai.vector_stores.file_batches.create(vs.id, file_ids=list(ids))
    assert batch.id
    assert batch.vector_store_id == vs.id
    deadline = time.monotonic() + 30
    while batch.status == "in_progress" and time.monotonic() < deadline:
        time.sleep(0.2)
        batch = oai.vector_stores.file_batches.retrieve(batch.id, vector_store_id=vs.id)
    assert batch.status == "completed", batch
    assert batch.file_counts.completed == 3 and batch.file_counts.total == 3

    in_batch = {f.id for f in oai.vector_stores.file_batches.list_files(batch.id, vector_store_id=vs.id)}
    assert in_batch == set(ids)
    assert {f.id for f in oai.vector_stores.files.list(vs.id)} == set(ids)

    hits = list(oai.vector_stores.search(vs.id, query="what is the password"))
    assert hits and ids[hits[0].file_id] == "alpha.txt"
    assert "marmalade" in hits[0].content[0].text


def test_vector_store_file_attributes_and_search_filters(oai):
    en = oai.files.create(file=("pen-en.txt", b"Penguins live in Antarctica.\n", "text/plain"), purpose="assistants")
    fr = oai.files.create(file=("pen-fr.txt", b"Penguins vivent en Antarctica.\n", "text/plain"), purpose="assistants")
    vs = oai.vector_stores.create(name=unique("attrs"))
    a = oai.vector_stores.files.create(vs.id, file_id=en.id, attributes={"lang": "en", "year": 2024})
    assert a.attributes == {"lang": "en", "year": 2024}
    oai.vector_stores.files.create(vs.id, file_id=fr.id, attributes={"lang": "fr", "year": 2025})
    wait_vector_store_ready(oai, vs.id, expect_files=2)

    hits = list(oai.vector_stores.search(vs.id, query="penguins Antarctica",
                                         filters={"type": "eq", "key": "lang", "value": "fr"}))
    assert [h.file_id for h in hits] == [fr.id]
    assert hits[0].attributes["lang"] == "fr"
    newer = list(oai.vector_stores.search(vs.id, query="penguins", filters={"type": "gte", "key": "year", "value": 2025}))
    assert [h.file_id for h in newer] == [fr.id]

    updated = oai.vector_stores.files.update(en.id, vector_store_id=vs.id, attributes={"lang": "de"})
    assert updated.attributes == {"lang": "de"}
    de = list(oai.vector_stores.search(vs.id, query="penguins", filters={"type": "eq", "key": "lang", "value": "de"}))
    assert [h.file_id for h in de] == [en.id]

    parsed = list(oai.vector_stores.files.content(en.id, vector_store_id=vs.id))
    assert "".join(p.text for p in parsed) == "Penguins live in Antarctica.\n"
    assert {f.id for f in oai.vector_stores.files.list(vs.id, filter="completed")} == {en.id, fr.id}
    assert list(oai.vector_stores.files.list(vs.id, filter="failed")) == []


def test_search_returns_the_chunk_not_the_file(oai):
    paras = [f"Paragraph {i}: " + " ".join(f"fill{j}" for j in range(40)) for i in range(200)]
    paras[137] = "Paragraph 137: the hidden word is xylophonequartz and nothing else."
    data = "\n\n".join(paras).encode()
    assert len(data) < 65536  # under the suite's --max-file-bytes
    f = oai.files.create(file=("long.txt", data, "text/plain"), purpose="assistants")
    vs = oai.vector_stores.create(name=unique("chunks"), file_ids=[f.id])
    wait_vector_store_ready(oai, vs.id, expect_files=1)
    hits = list(oai.vector_stores.search(vs.id, query="xylophonequartz"))
    assert hits and hits[0].file_id == f.id
    text = "".join(c.text for c in hits[0].content)
    assert "Paragraph 137: the hidden word is xylophonequartz and nothing else." in text
    assert len(text) < len(data) // 4, f"a {len(text)}-character hit out of a {len(data)}-byte file is not a chunk"


def test_search_scores_and_score_threshold(oai):
    """OpenAI scores are similarities in [0, 1], and `ranking_options.score_threshold` ("a
    number between 0 and 1; numbers closer to 1 return only the most relevant results") drops
    what scores below it."""
    strong = oai.files.create(file=("strong.txt", b"Kestrel kestrel kestrel: the kestrel hovers.\n", "text/plain"),
                              purpose="assistants")
    weak = oai.files.create(file=("weak.txt", b"Many birds hover; one of them is the kestrel, among pigeons, "
                                              b"sparrows, crows, gulls, finches and starlings.\n", "text/plain"),
                            purpose="assistants")
    vs = oai.vector_stores.create(name=unique("scores"), file_ids=[strong.id, weak.id])
    wait_vector_store_ready(oai, vs.id, expect_files=2)
    hits = list(oai.vector_stores.search(vs.id, query="kestrel"))
    assert {h.file_id for h in hits} == {strong.id, weak.id}
    assert hits[0].file_id == strong.id
    assert all(0.0 <= h.score <= 1.0 for h in hits), [h.score for h in hits]
    for threshold in (0.5, 0.99):
        kept = list(oai.vector_stores.search(vs.id, query="kestrel", ranking_options={"score_threshold": threshold}))
        assert all(h.score >= threshold for h in kept), (threshold, [h.score for h in kept])
        assert {h.file_id for h in kept} <= {h.file_id for h in hits}


def test_vector_store_search_max_results(oai):
    ids = [oai.files.create(file=(f"rep-{i}.txt", f"Report {i}: penguins waddle.\n".encode(), "text/plain"),
                            purpose="assistants").id for i in range(4)]
    vs = oai.vector_stores.create(name=unique("many"), file_ids=ids)
    wait_vector_store_ready(oai, vs.id, expect_files=4)
    hits = list(oai.vector_stores.search(vs.id, query="penguins", max_num_results=2))
    assert len(hits) == 2


def test_unsearchable_file_fails_in_the_vector_store(oai):
    """A file the store cannot index is `failed` with a `last_error`, as OpenAI reports it; the
    store itself completes."""
    f = oai.files.create(file=("blob.bin", BINARY, "application/octet-stream"), purpose="assistants")
    vs = oai.vector_stores.create(name=unique("unsearchable"), file_ids=[f.id])
    vs = wait_vector_store_ready(oai, vs.id, expect_files=1)
    assert vs.file_counts.failed == 1 and vs.file_counts.completed == 0
    vf = oai.vector_stores.files.retrieve(f.id, vector_store_id=vs.id)
    assert vf.status == "failed"
    assert vf.last_error is not None and vf.last_error.message
    assert vf.last_error.code in ("unsupported_file", "invalid_file", "server_error")


def test_unknown_file_in_vector_store_is_an_error(oai):
    with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as e:
        oai.vector_stores.create(name=unique("bad"), file_ids=["file-doesnotexist0000000000"])
    assert "file-doesnotexist0000000000" in str(e.value)


def test_unknown_vector_store_is_404(oai):
    with pytest.raises(openai.NotFoundError) as e:
        oai.vector_stores.retrieve("vs_doesnotexist0000000000")
    assert "vs_doesnotexist0000000000" in str(e.value)
