"""Markdown pieces of the offline docs build (tools/offline_docs.py): the title cell split into frontmatter
and prose, LaTeX maths to MathML (latex2mathml) outside code, and the check that every figure a markdown cell
shows exists. No nbdev or HTML here: plain text in, text (and error messages) out."""
from __future__ import annotations

import html, re
from pathlib import Path

__all__ = ['split_header', 'MathTable', 'check_figures']

# ---------------------------------------------------------------- the title cell
_re_h1 = re.compile(r'^#\s+(\S.*?)\s*$')
_re_fm_item = re.compile(r'^-\s+([\w-]+):\s*(.*?)\s*$')

def split_header(src: str) -> tuple[dict, str]:
    """Split a chapter's title cell into frontmatter and the prose that follows it.

    `# Title`, then `> description` (every consecutive `>` line: a description wrapped over several lines is
    kept whole), then optionally nbdev's `- key: value` frontmatter lines. Everything else in the cell is
    returned as the body, so that the paper's idea written under the title reaches the page (nbdev's
    frontmatter processor drops the whole cell)."""
    lines = src.split('\n')
    at = next((i for i, l in enumerate(lines) if _re_h1.match(l)), None)
    if at is None: return {}, src
    fm = {'title': _re_h1.match(lines[at]).group(1)}
    i = at + 1
    while i < len(lines) and not lines[i].strip(): i += 1
    desc = []
    while i < len(lines) and lines[i].lstrip().startswith('>'):
        desc.append(lines[i].lstrip()[1:].strip()); i += 1
    if any(desc): fm['description'] = ' '.join(d for d in desc if d)
    j = i
    while j < len(lines) and not lines[j].strip(): j += 1
    items = []
    while j < len(lines) and _re_fm_item.match(lines[j]): items.append(lines[j][1:].strip()); j += 1
    if items and (j >= len(lines) or not lines[j].strip()):
        import yaml
        try: extra = yaml.safe_load('\n'.join(items))
        except yaml.YAMLError: extra = None
        if isinstance(extra, dict): fm.update(extra); i = j
    body = '\n'.join(lines[:at] + lines[i:]).strip('\n')
    return fm, body


# ---------------------------------------------------------------- maths: LaTeX -> MathML at build time
_re_fence = re.compile(r'^\s{0,3}(```+|~~~+)')
_re_inline_code = re.compile(r'(?P<t>`+)(?!`)[\s\S]*?(?<!`)(?P=t)(?!`)|<(?P<tag>pre|code)\b[\s\S]*?</(?P=tag)>', re.I)
_re_display_math = re.compile(r'(?<!\\)\$\$([\s\S]+?)(?<!\\)\$\$')
# Pandoc's rule: the opening $ has a non-space on its right, the closing $ a non-space on its left and no digit
# after it ("$5 and $10" is currency, not maths); \$ is a literal dollar
_re_inline_math = re.compile(r'(?<![\\$\w])\$(?![\s$])((?:[^$\\\n]|\\.|\n(?!\s*\n))+?)(?<![\s\\])\$(?![\d$\w])')

def _segments(md: str):
    "Yield (is_code, text) pieces of markdown: fenced blocks and code spans are code, the rest is prose."
    prose, fence, code = [], None, []
    for line in md.splitlines(keepends=True):
        m = _re_fence.match(line)
        if fence is None and m:
            if prose: yield from _split_spans(''.join(prose)); prose = []
            fence, code = m.group(1)[0] * 3, [line]
        elif fence is not None:
            code.append(line)
            if line.strip().startswith(fence): yield True, ''.join(code); fence, code = None, []
        else: prose.append(line)
    if code: yield True, ''.join(code)
    if prose: yield from _split_spans(''.join(prose))

def _split_spans(text: str):
    pos = 0
    for m in _re_inline_code.finditer(text):
        if m.start() > pos: yield False, text[pos:m.start()]
        yield True, m.group(0); pos = m.end()
    if pos < len(text): yield False, text[pos:]

class MathTable:
    "LaTeX found in markdown, replaced by placeholders that survive the markdown renderer, then by MathML."
    def __init__(self, key: str = ''):
        self.key, self.items = re.sub(r'\W', '', key)[:8].lower(), []

    def _token(self, latex: str, display: bool, where: str, errors: list) -> str:
        import latex2mathml.converter
        try:
            mathml = latex2mathml.converter.convert(latex.strip(), display='block' if display else 'inline')
            unknown = re.findall(r'>(\\[A-Za-z]+)<', mathml)
            if unknown: raise ValueError(f"unknown command(s) {', '.join(sorted(set(unknown)))}")
        except Exception as e:
            errors.append(f"{where}: cannot render the maths ${latex.strip()[:60]}$ ({type(e).__name__}: {e}); "
                          "fix the LaTeX, or escape a literal dollar as \\$")
            mathml = f'<code class="math-error">{html.escape(latex)}</code>'
        self.items.append((display, mathml))
        return f'zzmath{self.key}x{len(self.items) - 1}zz'

    def extract(self, md: str, where: str, errors: list) -> str:
        "Markdown with every `$$...$$` and `$...$` outside code replaced by a placeholder."
        out = []
        for is_code, text in _segments(md):
            if not is_code and '$' in text:
                text = _re_display_math.sub(lambda m: '\n\n' + self._token(m.group(1), True, where, errors) + '\n\n'
                                            if m.group(0) == text.strip() or '\n' in m.group(1)
                                            else self._token(m.group(1), True, where, errors), text)
                text = _re_inline_math.sub(lambda m: self._token(m.group(1), False, where, errors), text)
            out.append(text)
        return ''.join(out)

    def substitute(self, body: str) -> str:
        "Put the MathML in place of the placeholders of rendered HTML."
        if not self.items: return body
        def sub(m):
            display, mathml = self.items[int(m.group(2))]
            return mathml
        body = re.sub(rf'<p>\s*(zzmath{self.key}x(\d+)zz)\s*</p>', lambda m: sub(m), body)
        return re.sub(rf'(zzmath{self.key}x(\d+)zz)', sub, body)


# ---------------------------------------------------------------- figures a markdown cell refers to
_re_md_img = re.compile(r'!\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
_re_html_img = re.compile(r'<img\b[^>]*?\bsrc\s*=\s*["\']([^"\']+)["\']', re.I)

def check_figures(md: str, attachments: dict | None, nb_dir: Path, where: str, errors: list):
    "Every image a markdown cell shows must exist: an attachment, a data URI, or a file next to the notebook."
    for is_code, text in _segments(md):
        if is_code: continue
        for src in _re_md_img.findall(text) + _re_html_img.findall(text):
            if src.startswith('data:'): continue
            if src.startswith('attachment:'):
                if src[len('attachment:'):] not in (attachments or {}):
                    errors.append(f"{where}: missing figure '{src}': the cell has no such attachment")
            elif re.match(r'^([a-z][\w+.-]*:)?//', src, re.I):
                errors.append(f"{where}: figure '{src}' is on the network; the site is offline: save it next to the notebook")
            elif not (nb_dir / src.split('#')[0].split('?')[0]).is_file():
                errors.append(f"{where}: missing figure '{src}' (no file {nb_dir.name}/{src})")
