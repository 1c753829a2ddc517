"""Model output rendered as sanitised markdown (alignkit.app.render)."""

from alignkit.app.render import render_markdown


def test_code_fence_becomes_code_block():
    r = render_markdown("Here:\n\n```python\nprint('<b>')\n```\n")
    assert '<pre><code class="language-python">' in r.html
    assert "print(&#x27;&lt;b&gt;&#x27;)" in r.html or "print('&lt;b&gt;')" in r.html
    assert not r.truncated


def test_raw_html_and_script_are_escaped():
    r = render_markdown('<script>alert(1)</script> <img src=x onerror="alert(2)"> **bold**')
    assert "<script>" not in r.html and "<img" not in r.html
    assert "&lt;script&gt;" in r.html
    assert "<strong>bold</strong>" in r.html


def test_only_safe_link_schemes():
    r = render_markdown("[a](javascript:alert(1)) [b](https://example.org) [c](data:text/html,x)")
    assert 'href="https://example.org"' in r.html
    assert 'rel="nofollow noopener noreferrer"' in r.html
    assert 'href="javascript' not in r.html and 'href="data' not in r.html


def test_images_do_not_load():
    r = render_markdown("![alt text](https://tracker.example/p.png)")
    assert "<img" not in r.html


def test_long_text_is_cut():
    r = render_markdown("x" * 1_000_000, max_chars=20_000)
    assert r.truncated and r.chars == 1_000_000
    assert len(r.html) < 25_000


def test_no_cut_when_asked():
    r = render_markdown("y" * 30_000, max_chars=None)
    assert not r.truncated and r.html.count("y") == 30_000
