// A console opened from a URL that `ucloud vm console` printed: the token is in the fragment.
import { say, openVnc, openSerial } from './common.js';

const element = document.getElementById('console');
const token = new URLSearchParams(location.hash.slice(1)).get('token');
let base = document.querySelector('meta[name="console-websocket"]').content;
if (!base) base = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/websockify`;
// Used once: a reload must not try it again.
history.replaceState(null, '', location.pathname);
if (!token) {
  say('This console URL has no token: ask for a new one (ucloud vm console NAME).');
} else {
  const url = `${base}?token=${encodeURIComponent(token)}`;
  if (element.dataset.kind === 'serial') openSerial(element, url); else openVnc(element, url);
}
