import { call, say, openVnc, openSerial } from './common.js';
import { actionButtons } from './actions.js';

const vmid = document.getElementById('vm').dataset.vm;
const consoleElement = document.getElementById('console');
let shown = '';
let opened = null;

async function refresh() {
  let vm;
  try {
    vm = await call('GET', `/console/api/vm/${vmid}`);
  } catch (e) {
    say(e.message);
    return;
  }
  document.getElementById('status').textContent = vm.status;
  document.getElementById('desired').textContent = vm.desired;
  document.getElementById('host').textContent = vm.hostname || '-';
  const key = JSON.stringify([vm.status, vm.log.length, vm.log.at(-1)]);
  if (key === shown) return;
  shown = key;
  document.getElementById('actions').replaceChildren(...actionButtons(vm, refresh));
  document.querySelector('#events tbody').replaceChildren(...vm.log.slice().reverse().map((e) => {
    const row = document.createElement('tr');
    for (const value of [new Date(e.time * 1000).toLocaleString(), e.by, e.message]) {
      const td = document.createElement('td');
      td.textContent = value;
      row.append(td);
    }
    return row;
  }));
}

function close() {
  if (!opened) return;
  opened.close();
  opened = null;
}

async function open(serial) {
  close();
  say('');
  try {
    const reply = await call('POST', `/console/api/vm/${vmid}/console`, { serial });
    opened = serial ? openSerial(consoleElement, reply.websocket) : await openVnc(consoleElement, reply.websocket);
  } catch (e) {
    say(e.message);
  }
}

document.getElementById('open-vnc').addEventListener('click', () => open(false));
document.getElementById('open-serial').addEventListener('click', () => open(true));
refresh();
setInterval(refresh, 2000);
