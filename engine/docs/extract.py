"""Text out of documents: plain text, Markdown, source code, HTML (text only, via html.parser), PDF (pypdf,
with page numbers) and DOCX (python-docx, with headings). Each file gives Blocks: a paragraph or heading with
where it came from (page, or first and last line). A file that cannot be read raises Unreadable with the
reason; the caller lists it and goes on with the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

MAX_FILE_BYTES = 64 << 20  # bigger files are listed as unreadable, not loaded into memory
TEXT_SUFFIXES = {".txt", ".text", ".rst", ".log", ".csv", ".tsv", ".ini", ".cfg", ".toml", ".yaml", ".yml",
                 ".json", ".xml"}  # fmt: skip
MARKDOWN_SUFFIXES = {".md", ".markdown"}
CODE_SUFFIXES = {".py", ".js", ".ts", ".tsx", ".jsx", ".c", ".h", ".cc", ".cpp", ".hpp", ".rs", ".go", ".java",
                 ".kt", ".rb", ".php", ".sh", ".cs", ".swift", ".scala", ".lua", ".sql", ".r", ".m"}  # fmt: skip
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
SUPPORTED = TEXT_SUFFIXES | MARKDOWN_SUFFIXES | CODE_SUFFIXES | HTML_SUFFIXES | {".pdf", ".docx"}


class Unreadable(Exception):
    """A file that gives no text; str() is the reason, for the list of files left out."""


@dataclass(frozen=True)
class Block:
    """A paragraph (or heading, or code block) and where it is: page (PDF) or line range (text)."""

    text: str
    heading: bool = False
    page: int | None = None
    line_start: int | None = None
    line_end: int | None = None


def extract(path: Path) -> list[Block]:
    """The file's blocks in reading order; raises Unreadable."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED:
        raise Unreadable(f"'{suffix or path.name}' files are not supported")
    try:
        size = path.stat().st_size
    except OSError as err:
        raise Unreadable(err.strerror or str(err)) from None
    if size > MAX_FILE_BYTES:
        raise Unreadable(f"larger than {MAX_FILE_BYTES >> 20} MB")
    if suffix == ".pdf":
        blocks = _pdf(path)
    elif suffix == ".docx":
        blocks = _docx(path)
    else:
        text = _read_text(path)
        if suffix in HTML_SUFFIXES:
            blocks = _html(text)
        elif suffix in CODE_SUFFIXES:
            blocks = _lines(text, markdown=False, blank_splits=True)
        else:
            blocks = _lines(text, markdown=suffix in MARKDOWN_SUFFIXES, blank_splits=True)
    blocks = [b for b in blocks if b.text.strip()]
    if not blocks:
        raise Unreadable(
            "no text in it (a scanned PDF needs OCR first)" if suffix == ".pdf" else "no text in it"
        )
    return blocks


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise Unreadable(err.strerror or str(err)) from None
    if b"\x00" in data[:8192]:
        raise Unreadable("binary data, not text")
    for encoding in ("utf-8-sig", "utf-16") if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ("utf-8-sig",):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")  # every byte decodes: old 8-bit text is still text


_HEADING = re.compile(r"^(#{1,6})\s+\S")


def _lines(text: str, markdown: bool, blank_splits: bool) -> list[Block]:
    """Paragraphs separated by blank lines (Markdown headings are blocks of their own; a fenced code block
    stays whole), each with its 1-based line range."""
    blocks: list[Block] = []
    buf: list[str] = []
    start = 0
    fenced = False

    def flush(end: int) -> None:
        nonlocal buf
        if buf:
            blocks.append(Block("\n".join(buf).strip("\n"), line_start=start, line_end=end))
        buf = []

    for n, line in enumerate(text.splitlines(), 1):
        if markdown and line.lstrip().startswith("```"):
            if fenced:  # the closing fence ends the code block
                buf.append(line.rstrip())
                flush(n)
                fenced = False
                continue
            flush(n - 1)
            fenced = True
        if markdown and not fenced and _HEADING.match(line):
            flush(n - 1)
            blocks.append(Block(line.strip(), heading=True, line_start=n, line_end=n))
            continue
        if not line.strip() and not fenced and blank_splits:
            flush(n - 1)
            continue
        if not buf:
            start = n
        buf.append(line.rstrip())
    flush(len(text.splitlines()))
    return blocks


class _HtmlText(HTMLParser):
    BLOCK = {"p", "div", "li", "tr", "br", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "section", "article",
             "blockquote", "table", "ul", "ol", "dt", "dd", "header", "footer", "title"}  # fmt: skip
    SKIP = {"script", "style", "noscript", "template", "svg"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self.buf: list[str] = []
        self.skip = 0
        self.heading = False

    def flush(self) -> None:
        text = re.sub(r"\s+", " ", "".join(self.buf)).strip()
        if text:
            self.blocks.append(Block(text, heading=self.heading))
        self.buf = []
        self.heading = False

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skip += 1
        elif tag in self.BLOCK:
            self.flush()
            self.heading = tag in {"h1", "h2", "h3", "h4", "h5", "h6"}

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCK:
            self.flush()

    def handle_data(self, data):
        if not self.skip:
            self.buf.append(data)


def _html(text: str) -> list[Block]:
    parser = _HtmlText()
    parser.feed(text)
    parser.close()
    parser.flush()
    return parser.blocks


def _pdf(path: Path) -> list[Block]:
    import pypdf
    from pypdf.errors import PdfReadError

    try:
        reader = pypdf.PdfReader(path)
        if reader.is_encrypted:
            raise Unreadable("encrypted PDF")
        blocks = []
        for number, page in enumerate(reader.pages, 1):
            text = page.extract_text() or ""
            for para in re.split(r"\n\s*\n", text):
                if para.strip():
                    blocks.append(Block(para.strip(), page=number))
        return blocks
    except Unreadable:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as err:
        raise Unreadable(f"not a readable PDF ({err})") from None


def _docx(path: Path) -> list[Block]:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(str(path))
    except (PackageNotFoundError, KeyError, ValueError, OSError) as err:
        raise Unreadable(f"not a readable DOCX ({err})") from None
    except Exception as err:  # a corrupt zip or XML raises many library-specific types
        raise Unreadable(f"not a readable DOCX ({type(err).__name__}: {err})") from None
    blocks = []
    for para in document.paragraphs:
        style = (para.style.name if para.style is not None else "") or ""
        if para.text.strip():
            blocks.append(Block(para.text.strip(), heading=style.startswith(("Heading", "Title"))))
    for table in document.tables:
        for row in table.rows:
            cells = " | ".join(c.text.strip() for c in row.cells if c.text.strip())
            if cells:
                blocks.append(Block(cells))
    return blocks
