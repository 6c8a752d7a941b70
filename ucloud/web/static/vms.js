import { call, say } from './common.js';
import { actionButtons } from './actions.js';

const body = document.querySelector('#vms tbody');
let shown = '';

async function refresh() {
  let data;
  try {
    data = await call('GET', '/console/api/vms');
  } catch (e) {
    say(e.message);
    return;
  }
  const key = JSON.stringify(data.vms.map((v) => [v.uuid, v.name, v.status, v.hostname]));
  if (key === shown) return; // keep the buttons the user may be about to click
  shown = key;
  document.getElementById('empty').hidden = data.vms.length > 0;
  body.replaceChildren(...data.vms.map((vm) => {
    const row = document.createElement('tr');
    row.dataset.vm = vm.uuid;
    const link = document.createElement('a');
    link.href = `/console/vm/${vm.uuid}`;
    link.textContent = vm.name;
    const cells = [link, vm.status, vm.hostname || '-', vm.specs.cpu, `${vm.specs.ram} GiB`];
    for (const value of cells) {
      const td = document.createElement('td');
      if (value instanceof Node) td.append(value); else td.textContent = value;
      row.append(td);
    }
    row.children[1].className = 'status';
    const actions = document.createElement('td');
    actions.append(...actionButtons(vm, refresh));
    row.append(actions);
    return row;
  }));
}

refresh();
setInterval(refresh, 2000);
