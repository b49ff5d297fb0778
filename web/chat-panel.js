// The chat panel shared by the cast and play pages: it shows a Chat (from vessel.js) in the
// page's #chat section — state, messages in id order, removals, errors — and sends what is
// typed in #chatform. The pages add their own parts (the caster's moderation, a viewer's name).

const STATE_TEXT = { connecting: 'connecting…', open: '', reconnecting: 'reconnecting…', closed: 'closed' };

function timeOf(at) {
  return at ? new Date(at).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : '';
}

/**
 * One message as a list item (`data-id`, `data-caster`), with a Remove button when
 * `onRemove` is given (the caster's page).
 */
function messageItem(m, onRemove) {
  const li = document.createElement('li');
  li.className = 'msg';
  li.dataset.id = String(m.id);
  li.dataset.caster = String(m.caster);
  const when = Object.assign(document.createElement('time'), { className: 'at', textContent: timeOf(m.at) });
  const who = Object.assign(document.createElement('span'), { className: 'who', textContent: m.name });
  const text = Object.assign(document.createElement('span'), { className: 'text', textContent: m.text });
  li.append(when, who, text);
  if (onRemove) {
    const remove = Object.assign(document.createElement('button'), {
      type: 'button', className: 'remove', textContent: 'Remove', title: 'Remove this message for everyone',
    });
    remove.addEventListener('click', () => onRemove(m.id));
    li.append(remove);
  }
  return li;
}

/**
 * Wires `room` (a vessel.js Chat) to the page's chat elements (#chat, #chatlist, #chattext,
 * #chaterror, #chatstate, #chatform). `moderated`: messages get a Remove button.
 */
export function showChat(room, { moderated = false } = {}) {
  const $ = (id) => document.getElementById(id);
  const [panel, list, input, error, stateEl] = ['chat', 'chatlist', 'chattext', 'chaterror', 'chatstate'].map($);
  const onRemove = moderated ? (id) => room.remove(id) : null;

  room.on('state', (s) => {
    panel.dataset.state = s;
    stateEl.textContent = STATE_TEXT[s] ?? s;
  });
  room.on('message', (m) => {
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    // In id order (the SDK delivers them so; keep it even if not).
    const next = [...list.children].find((el) => Number(el.dataset.id) > m.id);
    list.insertBefore(messageItem(m, onRemove), next ?? null);
    if (atBottom) list.scrollTop = list.scrollHeight;
  });
  room.on('removed', (id) => list.querySelector(`li[data-id="${id}"]`)?.remove());
  room.on('reset', () => list.replaceChildren());

  let lastSent = '';
  room.on('error', (err) => {
    error.textContent = err.reason ?? err.message;
    // A refused message (too long, too fast) comes back to the box, to edit or resend.
    if (lastSent && !input.value) input.value = lastSent;
    lastSent = '';
  });
  room.on('message', (m) => {
    if (lastSent && m.name === room.name && m.text === lastSent.trim()) lastSent = ''; // went through
  });
  $('chatform').addEventListener('submit', (e) => {
    e.preventDefault();
    const text = input.value;
    if (!text.trim()) return;
    error.textContent = '';
    if (!room.send(text)) {
      error.textContent = 'Not connected: try again in a moment.';
      return;
    }
    lastSent = text;
    input.value = '';
    // Kept by the SDK until the chat (re)connects.
    if (room.state !== 'open') error.textContent = 'Not connected yet: the message goes out once the chat connects.';
  });
}
