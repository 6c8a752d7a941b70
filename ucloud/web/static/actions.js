import { call, say } from './common.js';

// Every action is offered whatever the status: which apply is the API's to decide, and a
// refusal shows the API's own message (no second copy of its rules here).
const ACTIONS = ['start', 'stop', 'suspend', 'resume', 'reboot'];

export function actionButtons(vm, onDone) {
  return ACTIONS.map((action) => {
    const button = document.createElement('button');
    button.type = 'button';
    button.textContent = action;
    button.dataset.action = action;
    button.addEventListener('click', async () => {
      button.disabled = true;
      try {
        const reply = await call('POST', `/console/api/vm/${vm.uuid}/action`, { action });
        say(`${vm.name}: ${reply.message}`, true);
        onDone();
      } catch (e) {
        say(`${vm.name}: ${e.message}`);
      } finally {
        button.disabled = false;
      }
    });
    return button;
  });
}
