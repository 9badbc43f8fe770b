"""Open a page in headless Chromium and inspect it, through the Chrome DevTools Protocol over a pipe.

`chromium --remote-debugging-pipe` reads DevTools commands on file descriptor 3 and writes replies
on 4, as JSON messages ending in a NUL byte: no websocket, no port, no Python dependency. Used by
the browser test of the HTML report, and to make the README's screenshot (in 256 colours):

    python tests/browser.py REPORT.html OUT.png [WIDTH]
"""
import base64
import fcntl
import json
import os
from pathlib import Path
import select
import shutil
import subprocess
import sys
import tempfile
import time
import typing as tp

# Waits until every <audio> has its metadata (readyState >= 1) or an error, and every <img> has
# finished, then reports each one. `preload` is forced to 'auto' so nothing waits for a click.
CHECK_MEDIA = """
(async () => {
  const audios = [...document.querySelectorAll('audio')];
  const settled = audios.map(a => new Promise(resolve => {
    const done = () => resolve();
    if (a.readyState >= 1 || a.error) { done(); return; }
    a.addEventListener('loadedmetadata', done, {once: true});
    a.addEventListener('error', done, {once: true});
    for (const s of a.querySelectorAll('source')) s.addEventListener('error', done, {once: true});
    a.preload = 'auto';
    a.load();
  }));
  const images = [...document.images].map(img => img.complete ? null :
      new Promise(resolve => { img.onload = img.onerror = resolve; }));
  await Promise.race([Promise.all([...settled, ...images]),
                      new Promise(resolve => setTimeout(resolve, 20000))]);
  return {
    audio: audios.map(a => ({src: a.currentSrc || a.getAttribute('src') ||
                                  (a.querySelector('source') || {}).src,
                             readyState: a.readyState, duration: a.duration,
                             error: a.error ? a.error.code : null})),
    images: [...document.images].map(img => ({src: img.getAttribute('src'), width: img.naturalWidth})),
    rows: document.querySelectorAll('tr.prompt').length,
    scripts: document.querySelectorAll('script').length,
    captions: [...document.querySelectorAll('.caption')].map(e => e.textContent),
    details: [...document.querySelectorAll('details')].map(d => d.querySelector('summary').textContent),
  };
})()
"""


def find_chromium() -> tp.Optional[str]:
    for name in ('chromium', 'chromium-browser', 'google-chrome'):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """A headless Chromium driven over `--remote-debugging-pipe`; use as a context manager."""
    def __init__(self, executable: str, timeout: float = 60.0):
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix='chromium-profile-')
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_pipes() -> None:  # in the child: the pipes become its fds 3 (commands) and 4 (replies)
            # Through copies above 10 first: a pipe may already be fd 3 or 4, and dup2 onto itself
            # would leave it close-on-exec.
            commands, replies = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w))
            os.dup2(commands, 3)
            os.dup2(replies, 4)

        args = [executable, '--headless', '--remote-debugging-pipe', '--no-sandbox', '--disable-gpu',
                '--no-first-run', '--no-default-browser-check', '--mute-audio', '--hide-scrollbars',
                f'--user-data-dir={self._profile}', '--autoplay-policy=no-user-gesture-required',
                'about:blank']
        self._process = subprocess.Popen(args, preexec_fn=wire_pipes, close_fds=False,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b''
        self._next_id = 0
        self.session: tp.Optional[str] = None

    def __enter__(self) -> 'Browser':
        target = self.send('Target.createTarget', url='about:blank')['targetId']
        self.session = self.send('Target.attachToTarget', targetId=target, flatten=True)['sessionId']
        self.send('Page.enable')
        return self

    def __exit__(self, *exc: tp.Any) -> None:
        try:
            self.send('Browser.close', session=False)
        except Exception:
            pass
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        shutil.rmtree(self._profile, ignore_errors=True)

    def send(self, method: str, session: bool = True, **params: tp.Any) -> dict:
        """Send one DevTools command and return its result (raises on a protocol error)."""
        self._next_id += 1
        message: dict = {'id': self._next_id, 'method': method, 'params': params}
        if session and self.session:
            message['sessionId'] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b'\0')
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if reply.get('id') == self._next_id:
                if 'error' in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get('result', {})

    def _read(self, deadline: float) -> dict:
        while b'\0' not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError(f"Chromium did not answer within {self.timeout} s.")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe (did it crash?).")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b'\0', 1)
        return json.loads(message)

    def open(self, path: Path, width: int = 1280) -> None:
        """Load a local file and wait for its load event."""
        self.send('Emulation.setDeviceMetricsOverride', width=width, height=900, deviceScaleFactor=1,
                  mobile=False)
        self.send('Page.navigate', url=Path(path).resolve().as_uri())
        deadline = time.monotonic() + self.timeout
        while True:
            event = self._read(deadline)
            if event.get('method') == 'Page.loadEventFired':
                return

    def evaluate(self, expression: str) -> tp.Any:
        result = self.send('Runtime.evaluate', expression=expression, awaitPromise=True, returnByValue=True)
        if 'exceptionDetails' in result:
            raise RuntimeError(f"script error: {result['exceptionDetails']}")
        return result['result'].get('value')

    def screenshot(self, path: Path) -> Path:
        """The whole page (not only the viewport) as a PNG."""
        size = self.send('Page.getLayoutMetrics')['cssContentSize']
        data = self.send('Page.captureScreenshot', format='png', captureBeyondViewport=True,
                         clip={'x': 0, 'y': 0, 'width': size['width'], 'height': size['height'], 'scale': 1})
        Path(path).write_bytes(base64.b64decode(data['data']))
        return Path(path)


def check_page(page: Path, screenshot: tp.Optional[Path] = None, width: int = 1280) -> dict:
    """CHECK_MEDIA's findings for a page (and its full-page screenshot); skips the calling test when
    there is no Chromium, or fails it when CI is set (`make test` installs Chromium: there the checks
    must run). Callers check everything that needs no browser first."""
    executable = find_chromium()
    if executable is None:
        import pytest
        message = ("no headless browser: Debian's chromium is not installed and could not be "
                   "(`scripts/setup.sh --browser`, run by `make test`, installs it)")
        if os.environ.get('CI', '').lower() in ('1', 'true', 'yes'):
            pytest.fail(message + "; CI is set, so the browser checks must run")
        pytest.skip(message)
    with Browser(executable) as browser:
        browser.open(page, width=width)
        checks = browser.evaluate(CHECK_MEDIA)
        if screenshot is not None:
            browser.screenshot(screenshot)
    return checks


def main(argv: tp.List[str]) -> int:
    executable = find_chromium()
    if executable is None:
        print("chromium not found: install Debian's chromium (scripts/setup.sh --browser)", file=sys.stderr)
        return 2
    page, out = Path(argv[0]), Path(argv[1])
    checks = check_page(page, out, width=int(argv[2]) if len(argv) > 2 else 1280)
    from PIL import Image  # matplotlib's dependency: 256 colours keep the committed PNG small
    Image.open(out).convert('RGB').quantize(256, method=Image.Quantize.FASTOCTREE).save(out, optimize=True)
    broken = [a for a in checks['audio'] if a['error'] is not None or a['readyState'] < 1]
    print(f"{len(checks['audio'])} audio elements ({len(broken)} broken), {checks['rows']} rows -> {out}")
    return 1 if broken else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
