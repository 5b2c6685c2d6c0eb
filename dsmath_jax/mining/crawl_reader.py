"""Reading crawl files into page records (`pages.make_page`), local or remote (any Beam filesystem:
gs://, s3://, hdfs://), with every bad input skipped and counted, never a crash.

Formats, by file name:
* `*.warc`, `*.warc.gz`: WARC `response` records of HTML pages (HTTP 200, `text/html` or
  `application/xhtml+xml`), converted by `html_text.html_to_text`; WET files (`*.wet`, `*.wet.gz`,
  Common Crawl's `*.warc.wet.gz`) hold `conversion` records of plain text. Both are read by one
  reader that looks at each record's type.
* `*.jsonl`, `*.jsonl.gz`: one JSON object per line with `url` and `text` (and optionally `title`).

Counters (`metrics.count`), so the stats show what was dropped and why:
`files_read`, `files_empty`, `files_without_records`, `files_truncated` (the file ends inside a record, or its tail is
unreadable), `records_truncated` (a record cut off by the end of its file), `records_corrupt` (a record that could not
be parsed; reading resumes at the next record), `records_not_html`, `records_http_error`, `pages_too_large`,
`pages_non_utf8` (decoded by their declared or detected charset), `pages_undecodable` (binary or unknown encoding),
`pages_parse_error`, `pages_too_short`, `jsonl_bad_lines`, `pages_read`.
"""

from __future__ import annotations

import codecs
import io
import json
import logging
import re
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from warcio.archiveiterator import ArchiveIterator

from dsmath_jax.mining.files import iter_lines, match
from dsmath_jax.mining.html_text import html_to_text
from dsmath_jax.mining.language import detect_language
from dsmath_jax.mining.metrics import count
from dsmath_jax.mining.pages import Page, make_page
from dsmath_jax.mining.tokens import token_counter

logger = logging.getLogger(__name__)

WARC_SUFFIXES = (".warc", ".warc.gz", ".wet", ".wet.gz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz")
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_\-:.]+)""", re.I)
_GZIP_MAGIC = b"\x1f\x8b\x08"
_MAX_RESYNCS = 1000


def file_format(path: str) -> str:
    """"warc" or "jsonl" from a file name; ValueError names the file otherwise."""
    name = path.lower()
    if name.endswith(WARC_SUFFIXES):
        return "warc"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    raise ValueError(f"{path}: unknown crawl file type (expected one of {WARC_SUFFIXES + JSONL_SUFFIXES})")


def decode_bytes(data: bytes, declared: str | None) -> tuple[str | None, bool]:
    """(text, was_utf8). Tries the declared charset, then UTF-8, then Resiliparse's detector;
    None for binary data (NUL bytes) or text with more than 1% undecodable characters."""
    if b"\x00" in data[:65536]:
        return None, False
    try:
        return data.decode("utf-8"), True
    except UnicodeDecodeError:
        pass
    candidates = []
    if declared:
        try:
            candidates.append(codecs.lookup(declared).name)
        except LookupError:
            pass
    from resiliparse.parse.encoding import detect_encoding

    detected = detect_encoding(data)
    if detected is not None:
        candidates.append(detected)
    for encoding in candidates:
        try:
            text = data.decode(encoding, errors="replace")
        except LookupError:
            continue
        bad = text.count("\ufffd") + sum(1 for ch in text[:65536] if ord(ch) < 32 and ch not in "\t\n\r\f")
        if bad <= 0.01 * max(len(text), 1):
            return text, False
    return None, False


def _charset(content_type: str | None, body: bytes) -> str | None:
    if content_type:
        for part in content_type.split(";")[1:]:
            key, _, value = part.partition("=")
            if key.strip().lower() == "charset" and value.strip():
                return value.strip().strip("\"'")
    match = _META_CHARSET.search(body[:4096])
    return match.group(1).decode("ascii", "ignore") if match else None


def _next_member(stream: BinaryIO, start: int, gzipped: bool) -> int | None:
    """Offset of the next gzip member (or uncompressed `WARC/` record start) at or after `start`."""
    marker = _GZIP_MAGIC if gzipped else b"\nWARC/"
    stream.seek(start)
    offset = start
    tail = b""
    while True:
        chunk = stream.read(1 << 20)
        if not chunk:
            return None
        buf = tail + chunk
        i = buf.find(marker)
        if i >= 0:
            found = offset - len(tail) + i
            return found if gzipped else found + 1
        tail = buf[-(len(marker) - 1):]
        offset += len(chunk)


def iter_warc_pages(stream: BinaryIO, name: str, *, max_page_bytes: int, min_text_chars: int,
                    count_tokens: Callable[[str], int], path_depth: int = 1,
                    main_content: bool = True, counter: Callable[[str, int], None] = count) -> Iterator[Page]:
    """Pages of a WARC or WET stream (must be seekable and not decompressed: gzip members are read
    here, so a corrupt member is skipped by resynchronising on the next one)."""
    head = stream.read(3)
    if not head:
        counter("files_empty", 1)
        return
    gzipped = head == _GZIP_MAGIC
    position, resyncs, records = 0, 0, 0
    while True:
        stream.seek(position)
        iterator = ArchiveIterator(stream, arc2warc=True, check_digests=False)
        record_start = position  # where the record being read starts (records follow each other)
        try:
            for record in iterator:
                records += 1
                page = _record_to_page(record, name, max_page_bytes=max_page_bytes, min_text_chars=min_text_chars,
                                       count_tokens=count_tokens, path_depth=path_depth,
                                       main_content=main_content, counter=counter)
                # (warcio knows a record's offset and length only once it was read to its end)
                record_start = position + iterator.get_record_offset() + iterator.get_record_length()
                if page is not None:
                    yield page
            break
        except Exception as e:  # noqa: BLE001 - warcio raises many types on bad framing; all mean 'corrupt'
            counter("records_corrupt", 1)
            nxt = _next_member(stream, record_start + 1, gzipped)
            logger.warning("%s: corrupt WARC record at byte %d (%s: %s); %s", name, record_start,
                           type(e).__name__, e, f"resuming at byte {nxt}" if nxt is not None else "stopping")
            resyncs += 1
            if nxt is None or resyncs > _MAX_RESYNCS:
                counter("files_truncated", 1)
                break
            position = nxt
    if records == 0:
        counter("files_without_records", 1)


def _record_to_page(record, name: str, *, max_page_bytes: int, min_text_chars: int,
                    count_tokens: Callable[[str], int], path_depth: int, main_content: bool,
                    counter: Callable[[str, int], None]) -> Page | None:
    rec_type = record.rec_type
    if rec_type not in ("response", "conversion"):
        return None  # warcinfo, request, metadata: nothing to read
    url = record.rec_headers.get_header("WARC-Target-URI")
    if not url:
        counter("records_corrupt", 1)
        logger.warning("%s: %s record without WARC-Target-URI", name, rec_type)
        return None
    length = int(record.rec_headers.get_header("Content-Length") or 0)
    if length > max_page_bytes:
        counter("pages_too_large", 1)
        return None
    if rec_type == "response":
        if record.http_headers is None:
            counter("records_not_html", 1)
            return None
        status = record.http_headers.get_statuscode()
        if status != "200":
            counter("records_http_error", 1)
            return None
        content_type = record.http_headers.get_header("Content-Type") or ""
        if not content_type.lower().startswith(_HTML_TYPES):
            counter("records_not_html", 1)
            return None
    else:
        content_type = record.rec_headers.get_header("Content-Type") or "text/plain"
    body = record.content_stream().read(max_page_bytes + 1)
    if len(body) > max_page_bytes:  # chunked or compressed bodies can exceed the record length
        counter("pages_too_large", 1)
        return None
    if getattr(record.raw_stream, "limit", 0) > 0:  # the file ended inside this record
        counter("records_truncated", 1)
        counter("files_truncated", 1)
        logger.warning("%s: record of %s is cut off (file truncated); skipped", name, url)
        return None
    text, was_utf8 = decode_bytes(body, _charset(content_type, body))
    if text is None:
        counter("pages_undecodable", 1)
        return None
    if not was_utf8:
        counter("pages_non_utf8", 1)
    title = ""
    if rec_type == "response":
        try:
            title, text = html_to_text(text, main_content=main_content)
        except Exception as e:  # noqa: BLE001 - any parser failure skips the page, counted
            counter("pages_parse_error", 1)
            logger.warning("%s: cannot parse HTML of %s (%s)", name, url, e)
            return None
    text = text.strip()
    if len(text) < min_text_chars:
        counter("pages_too_short", 1)
        return None
    counter("pages_read", 1)
    return make_page(url, text, title=title, language=detect_language(text), tokens=count_tokens(text),
                     source="warc" if rec_type == "response" else "wet", path_depth=path_depth)


def iter_jsonl_pages(lines: Iterator[bytes], name: str, *, max_page_bytes: int, min_text_chars: int,
                     count_tokens: Callable[[str], int], path_depth: int = 1,
                     counter: Callable[[str, int], None] = count) -> Iterator[Page]:
    """Pages of a JSONL file of {url, text[, title]} objects; bad lines are logged (file:line) and counted."""
    seen = 0
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        seen += 1
        if len(raw) > max_page_bytes * 2:  # JSON escaping can double the size
            counter("pages_too_large", 1)
            continue
        try:
            record = json.loads(raw)
            url, text = record["url"], record["text"]
            if not isinstance(url, str) or not isinstance(text, str):
                raise TypeError("`url` and `text` must be strings")
        except (ValueError, KeyError, TypeError) as e:
            counter("jsonl_bad_lines", 1)
            logger.warning("%s:%d: skipped: expected a JSON object with string `url` and `text` (%s)",
                           name, lineno, e)
            continue
        text = text.strip()
        if len(text.encode("utf-8")) > max_page_bytes:
            counter("pages_too_large", 1)
            continue
        if len(text) < min_text_chars:
            counter("pages_too_short", 1)
            continue
        counter("pages_read", 1)
        yield make_page(url, text, title=str(record.get("title") or ""), language=detect_language(text),
                        tokens=count_tokens(text), source="jsonl", path_depth=path_depth)
    if seen == 0:
        counter("files_empty", 1)


def read_crawl_file(path: str, *, max_page_bytes: int = 2_000_000, min_text_chars: int = 200,
                    count_tokens: Callable[[str], int] | None = None, path_depth: int = 1,
                    main_content: bool = True, counter: Callable[[str, int], None] = count) -> Iterator[Page]:
    """Pages of one crawl file (any Beam filesystem path); see the module docstring."""
    count_tokens = count_tokens or token_counter(None)
    fmt = file_format(path)
    counter("files_read", 1)
    if fmt == "warc":
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
            stream = raw if raw.seekable() else io.BytesIO(raw.read())
            yield from iter_warc_pages(stream, path, max_page_bytes=max_page_bytes, min_text_chars=min_text_chars,
                                       count_tokens=count_tokens, path_depth=path_depth,
                                       main_content=main_content, counter=counter)
    else:
        try:  # compression from the extension
            yield from iter_jsonl_pages(iter_lines(path), path, max_page_bytes=max_page_bytes,
                                        min_text_chars=min_text_chars, count_tokens=count_tokens,
                                        path_depth=path_depth, counter=counter)
        except (OSError, EOFError, zlib.error) as e:
            counter("files_truncated", 1)
            logger.warning("%s: unreadable past some point (%s: %s); pages before it are kept",
                           path, type(e).__name__, e)


def expand_patterns(patterns: list[str]) -> list[str]:
    """Every file matching the glob patterns (any Beam filesystem), sorted; an empty match is an error."""
    files: list[str] = []
    for pattern in patterns:
        matched = match(pattern)
        if not matched:
            raise FileNotFoundError(f"no crawl files match {pattern!r}")
        files.extend(matched)
    return sorted(set(files))


class ReadCrawlFile(beam.DoFn):
    """path -> pages (see `read_crawl_file`)."""

    def __init__(self, *, max_page_bytes: int, min_text_chars: int, tokenizer_path: str | None,
                 path_depth: int, main_content: bool):
        self.max_page_bytes = max_page_bytes
        self.min_text_chars = min_text_chars
        self.tokenizer_path = tokenizer_path
        self.path_depth = path_depth
        self.main_content = main_content
        self._count_tokens = None

    def setup(self):
        self._count_tokens = token_counter(self.tokenizer_path)

    def process(self, path: str):
        yield from read_crawl_file(path, max_page_bytes=self.max_page_bytes, min_text_chars=self.min_text_chars,
                                   count_tokens=self._count_tokens, path_depth=self.path_depth,
                                   main_content=self.main_content)


class ReadCrawl(beam.PTransform):
    """Crawl files (glob patterns) -> PCollection of pages. Files are listed on the driver and read in
    parallel, one file per worker call (Common Crawl files are about 1 GB each, a natural unit)."""

    def __init__(self, patterns: list[str], *, max_page_bytes: int = 2_000_000, min_text_chars: int = 200,
                 tokenizer_path: str | None = None, path_depth: int = 1, main_content: bool = True):
        super().__init__()
        self.files = expand_patterns(list(patterns))
        self.kwargs = dict(max_page_bytes=max_page_bytes, min_text_chars=min_text_chars,
                           tokenizer_path=tokenizer_path, path_depth=path_depth, main_content=main_content)

    def expand(self, pbegin):
        return (pbegin
                | "Files" >> beam.Create(self.files)
                | "Spread" >> beam.Reshuffle()
                | "Read" >> beam.ParDo(ReadCrawlFile(**self.kwargs)))
