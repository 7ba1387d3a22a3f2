# SPDX-License-Identifier: Apache-2.0
"""Builds the man pages asiosmtpd(8) and asiosmtpd.yaml(5) from the project's Markdown docs.

    gen_manpages.py SOURCE_DIR VERSION OUT_DIR [--gzip] [--help-from BINARY]

Each page has a template beside this script (asiosmtpd.8.md, asiosmtpd.yaml.5.md): Markdown
with a title line and `@include FILE SELECTOR` lines that pull text out of the real docs, so
the pages say what README.md and docs/configuration.md say and cannot drift from them:

    @include README.md section "Command line"     the body of that `##` section
    @include README.md paragraph "**Privileges**" the paragraph starting with that text, and
                                                  what follows it up to the next paragraph
                                                  that starts with `**` or a heading
    @include docs/configuration.md all            everything after the `#` title
    @options                                      the options of `BINARY --help` (the
                                                  built server), as a table

Only the Markdown the docs use is understood: `##`/`###` headings, paragraphs, `-` lists,
fenced code, pipe tables, and inline `code`, **bold**, *italic* and [links](...). Anything
else stays as text. Writes OUT_DIR/asiosmtpd.8 and OUT_DIR/asiosmtpd.yaml.5 (and .gz copies,
made reproducible with a zero timestamp, with --gzip). Python standard library only.
"""

import gzip
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PAGES = ["asiosmtpd.8", "asiosmtpd.yaml.5"]


# --- selecting text from the docs ------------------------------------------------------------
def _section(lines, title):
    """Lines of the `##` section whose title is `title` (without the heading itself)."""
    out, inside = [], False
    for line in lines:
        m = re.match(r"^(#+)\s+(.*?)\s*$", line)
        if m and len(m.group(1)) <= 2:
            if inside:
                break
            inside = m.group(2) == title
            continue
        if inside:
            out.append(line)
    if not inside and not out:
        raise SystemExit(f"gen_manpages: no section '## {title}'")
    return out


def _paragraph(lines, lead):
    """The paragraph starting with `lead`, and the blocks after it (code, lists, paragraphs)
    up to the next paragraph that starts with `**` (the next topic) or a heading."""
    out, inside, fence = [], False, False
    for i, line in enumerate(lines):
        if inside:
            if line.startswith("```"):
                fence = not fence
            starts_block = not fence and (i == 0 or not lines[i - 1].strip())
            if starts_block and (line.startswith("**") or line.startswith("#")):
                break
            out.append(line)
        elif line.startswith(lead):
            inside = True
            out.append(line)
    if not out:
        raise SystemExit(f"gen_manpages: no paragraph starting with {lead}")
    return out


def _select(source_dir, path, how, arg):
    with open(os.path.join(source_dir, path), encoding="utf-8") as f:
        lines = f.read().splitlines()
    if how == "all":
        return [line for line in lines if not re.match(r"^#\s", line)]
    if how == "section":
        return _section(lines, arg)
    if how == "paragraph":
        return _paragraph(lines, arg)
    raise SystemExit(f"gen_manpages: unknown selector {how}")


def _options(binary):
    """The OPTIONS of `binary --help` (CLI11's layout: "  -c,--config TEXT   text", long
    specs with their text on the next, deeper indented line) as a Markdown table."""
    import subprocess
    text = subprocess.run([binary, "--help"], capture_output=True, text=True, check=True,
                          timeout=30).stdout
    entries = []
    for line in text.split("Options:", 1)[1].splitlines():
        m = re.match(r"^  (-\S.*?)(?:\s{2,}(.*))?$", line)
        if m:
            entries.append([re.sub(r",(?=-)", ", ", m.group(1)), m.group(2) or ""])
        elif line.strip() and entries:
            entries[-1][1] = (entries[-1][1] + " " + line.strip()).strip()
    if not entries:
        raise SystemExit(f"gen_manpages: no options in {binary} --help")
    rows = ["| option | meaning |", "| --- | --- |"]
    rows += [f"| `{spec}` | {what[:1].upper() + what[1:]}. |" for spec, what in entries]
    return rows


def expand(template_lines, source_dir, binary=None):
    out = []
    for line in template_lines:
        if line.strip() == "@options":
            if not binary:
                raise SystemExit("gen_manpages: @options needs --help-from BINARY")
            out.extend(_options(binary))
            out.append("")
            continue
        m = re.match(r'^@include\s+(\S+)\s+(all|section|paragraph)(?:\s+"(.*)")?\s*$', line)
        if m:
            out.extend(_select(source_dir, m.group(1), m.group(2), m.group(3)))
            out.append("")
        else:
            out.append(line)
    return out


# --- Markdown to roff ------------------------------------------------------------------------
def _escape(text):
    """Plain text for roff: backslashes, and every character beyond ASCII as a groff
    \\[uXXXX] escape (troff reads bytes, not UTF-8, unless run through preconv)."""
    text = text.replace("\\", "\\e")
    return re.sub(r"[^\x00-\x7f]", lambda m: "\\[u%04X]" % ord(m.group(0)), text)


def _code(text):
    return _escape(text).replace("-", "\\-")


_INLINE = re.compile(r"(`+)(.+?)\1|\*\*(.+?)\*\*|(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])|\[([^\]]+)\]\(([^)]+)\)")


def inline(text):
    """Inline Markdown to roff: `code` and **bold** bold, *emphasis* italic, links as their
    text (with the address when it is a web address)."""
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(_escape(text[pos:m.start()]))
        if m.group(2) is not None:
            out.append("\\fB" + _code(m.group(2).strip()) + "\\fR")
        elif m.group(3) is not None:
            out.append("\\fB" + inline(m.group(3)) + "\\fR")
        elif m.group(4) is not None:
            out.append("\\fI" + inline(m.group(4)) + "\\fR")
        else:
            label, url = m.group(5), m.group(6)
            out.append(inline(label))
            if re.match(r"https?://", url) and url.rstrip("/") not in label:
                out.append(" <" + _code(url) + ">")
        pos = m.end()
    out.append(_escape(text[pos:]))
    return "".join(out)


def _line(text):
    """One output line; a leading . or ' would be a roff request."""
    text = text.strip()
    return "\\&" + text if text[:1] in (".", "'") else text


def _cells(row):
    """The cells of a pipe-table row; a | inside `code` does not split."""
    cells, cur, in_code = [], "", False
    for ch in row.strip().strip("|"):
        if ch == "`":
            in_code = not in_code
        if ch == "|" and not in_code:
            cells.append(cur.strip())
            cur = ""
        else:
            cur += ch
    cells.append(cur.strip())
    return cells


def _table(rows, out):
    """A pipe table as tagged paragraphs: the first column is the tag, the middle columns a
    line of `header: value`, the last column the text."""
    header = _cells(rows[0])
    for row in rows[2:]:
        cells = _cells(row)
        out += [".TP", _line(inline(cells[0]))]
        middle = [f"\\fI{_escape(h)}\\fR: {inline(c)}" for h, c in zip(header[1:-1], cells[1:-1])]
        if middle:
            out += [_line("; ".join(middle) + "."), ".br"]
        if len(cells) > 1:
            out.append(_line(inline(cells[-1])))


def to_roff(lines):
    out, i = [], 0
    para = []

    def flush():
        if para:
            out.append(".PP")
            out.append(_line(inline(" ".join(p.strip() for p in para))))
            para.clear()

    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            flush()
            out += [".PP", ".RS 4", ".nf"]
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                out.append("\\&" + _code(lines[i].rstrip()))
                i += 1
            out += [".fi", ".RE"]
            i += 1
            continue
        m = re.match(r"^(#+)\s+(.*?)\s*$", line)
        if m:
            flush()
            level, title = len(m.group(1)), m.group(2)
            if level == 1:  # a template's section: .SH TITLE
                out.append('.SH "' + inline(title).upper() + '"')
            else:
                out.append('.SS "' + inline(title) + '"')
            i += 1
            continue
        if line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|\s*$", lines[i + 1]):
            flush()
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(lines[i])
                i += 1
            _table(rows, out)
            continue
        if re.match(r"^[-*] ", line):
            flush()
            item = [line[2:]]
            i += 1
            while i < len(lines) and lines[i].startswith("  ") and lines[i].strip():
                item.append(lines[i])
                i += 1
            out += [".IP \\(bu 2", _line(inline(" ".join(p.strip() for p in item)))]
            continue
        if not line.strip():
            flush()
            i += 1
            continue
        para.append(line)
        i += 1
    flush()
    return out


def render(name, source_dir, version, binary=None):
    with open(os.path.join(HERE, name + ".md"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    # First line: "% TITLE SECTION" (the .TH line); the rest is Markdown.
    m = re.match(r"^%\s+(\S+)\s+(\d)\s*$", lines[0])
    if not m:
        raise SystemExit(f"gen_manpages: {name}.md must start with '% TITLE SECTION'")
    rest = re.sub(r"<!--.*?-->\n?", "", "\n".join(lines[1:]), flags=re.S).splitlines()
    # "@name NAME|what it is": the NAME section, in the form whatis and lexgrog read.
    names = [line for line in rest if line.startswith("@name ")]
    if len(names) != 1:
        raise SystemExit(f"gen_manpages: {name}.md needs one '@name NAME|summary' line")
    title, summary = names[0][len("@name "):].split("|", 1)
    rest = [line for line in rest if not line.startswith("@name ")]
    body = [".SH NAME", f"{_escape(title)} \\- {_escape(summary)}"] + to_roff(expand(rest, source_dir, binary))
    head = [
        f'.\\" {name}: generated by packaging/man/gen_manpages.py from the project\'s docs.',
        f'.TH "{m.group(1)}" "{m.group(2)}" "" "asiosmtpd {version}" "asiosmtpd"',
        ".ad l",  # no justification: long keys and code read better ragged
        ".nh",  # no hyphenation of keys and paths
    ]
    return "\n".join(head + body) + "\n"


def main(argv):
    binary = None
    if "--help-from" in argv:
        i = argv.index("--help-from")
        binary = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    args = [a for a in argv if not a.startswith("--")]
    if len(args) != 3:
        sys.stderr.write(__doc__)
        return 2
    source_dir, version, out_dir = args
    os.makedirs(out_dir, exist_ok=True)
    for name in PAGES:
        text = render(name, source_dir, version, binary).encode("utf-8")
        path = os.path.join(out_dir, name)
        with open(path, "wb") as f:
            f.write(text)
        if "--gzip" in argv:
            # mtime 0 and no file name in the header: the same bytes at every build.
            with open(path + ".gz", "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                                mtime=0, compresslevel=9) as gz:
                gz.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
