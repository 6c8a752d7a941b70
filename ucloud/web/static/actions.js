import { call, say } from './common.js';

// Which actions a status allows is the API's to decide: every button is offered, and a refusal
// shows the API's own message. These are only the likely ones, to keep the list short.
const LIKELY = {
  RUNNING: ['stop', 'suspend', 'reboot'],
  SUSPENDED: ['resume', 'stop'],
  STOPPED: ['start'],
  ERROR: ['start', 'stop'],
  KILLED: ['stop'],
  PENDING: ['stop'],
  SCHEDULED: ['stop'],
  CREATING: ['stop'],
};

export function actionButtons(vm, onDone) {
  const names = LIKELY[vm.status] || ['start', 'stop'];
  return names.map((action) => {
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
