import { call, say } from './common.js';

document.getElementById('logout').addEventListener('click', async () => {
  try {
    await call('POST', '/console/logout');
    location.href = '/console/login';
  } catch (e) { say(e.message); }
});
