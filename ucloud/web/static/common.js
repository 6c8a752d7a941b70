// What every page's script shares: calls to the page's JSON routes, messages, console sockets.

export function csrf() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : '';
}

// A call to the console page's own routes: the answer's JSON, or an Error with the server's
// message as it is (the API's rules and 409 messages are shown to the user unchanged).
export async function call(method, path, body) {
  const options = { method, headers: { 'X-CSRF-Token': csrf() }, credentials: 'same-origin' };
  if (body !== undefined) {
    options.headers['Content-Type'] = 'application/json';
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  if (response.status === 401) {
    location.href = '/console/login';
    throw new Error('not logged in');
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

export function say(text, ok = false) {
  const p = document.getElementById('message');
  p.textContent = text;
  p.className = ok ? 'ok' : '';
}

// A console the page closes on purpose (another one opens in its element) says nothing: its
// close event comes after the next console has started, and would mark that one closed.
function closer(close) {
  const handle = { closed: false };
  handle.close = () => { handle.closed = true; close(); };
  return handle;
}

// noVNC, bundled into one module when it was installed (package.json): loaded on the first
// console a page opens, not with every page.
const NOVNC = '/console/assets/novnc/rfb.js';
const NOVNC_RETRY_MS = [500, 2000];

// noVNC's RFB class. A fetch that fails once (a connection lost on the way) is tried again:
// browsers that follow whatwg/html#10327 (Chromium does) fetch a failed module anew on the next
// import; older ones keep the failure, and then only a reload helps.
async function loadNoVnc() {
  for (let attempt = 0; ; attempt++) {
    try {
      return (await import(NOVNC)).default;
    } catch (e) {
      if (attempt >= NOVNC_RETRY_MS.length) {
        throw new Error(`The console's scripts did not load (${e.message}): reload the page.`);
      }
      await new Promise((resolve) => { setTimeout(resolve, NOVNC_RETRY_MS[attempt]); });
    }
  }
}

// The display of a VM in `element`, through ucloud-console (noVNC). Returns what closes it.
export async function openVnc(element, url) {
  const RFB = await loadNoVnc();
  element.replaceChildren();
  element.dataset.state = 'connecting';
  element.dataset.kind = 'vnc';
  const rfb = new RFB(element, url, { shared: true });
  const handle = closer(() => rfb.disconnect());
  rfb.addEventListener('connect', () => { element.dataset.state = 'connected'; });
  rfb.addEventListener('disconnect', (e) => {
    if (handle.closed) return;
    element.dataset.state = 'disconnected';
    say(e.detail.clean ? 'The console closed.' : 'The console was refused or lost: open it again.');
  });
  return handle;
}

// The serial port of a VM in `element`, through ucloud-console (xterm.js). Returns what
// closes it.
export function openSerial(element, url) {
  element.replaceChildren();
  element.dataset.state = 'connecting';
  element.dataset.kind = 'serial';
  const term = new window.Terminal({ cols: 100, rows: 30, scrollback: 2000 });
  term.open(element);
  const ws = new WebSocket(url, ['binary']);
  ws.binaryType = 'arraybuffer';
  ws.onopen = () => { element.dataset.state = 'connected'; term.focus(); };
  ws.onmessage = (e) => term.write(new Uint8Array(e.data));
  const handle = closer(() => ws.close());
  ws.onclose = (e) => {
    if (handle.closed) return;
    element.dataset.state = 'disconnected';
    say(e.wasClean ? 'The serial console closed.' : 'The serial console was refused or lost: open it again.');
  };
  const encoder = new TextEncoder();
  term.onData((data) => { if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(data)); });
  return handle;
}
