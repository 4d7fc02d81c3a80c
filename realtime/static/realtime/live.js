"use strict";
// Plain JS, no build step. Protocol: docs/realtime.md.
const userTopic = JSON.parse(document.getElementById("user-topic").textContent);
const roomTopic = JSON.parse(document.getElementById("room-topic").textContent);
const lastIds = {};          // topic -> last id seen: sent on resubscribe to resume
let unread = 0, likes = 0, delay = 500;

function setState(state) {
  const el = document.getElementById("state");
  el.dataset.state = state; el.textContent = state;
}
function add(listId, text, cls) {
  const li = document.createElement("li");
  li.textContent = text; if (cls) li.className = cls;
  document.getElementById(listId).prepend(li);
}
const shown = new Set();     // notification ids on the page: a repeated push shows once
function showNotification(n) {
  if (shown.has(n.id)) return;
  shown.add(n.id);
  add("notifications", `${n.title}${n.body ? " · " + n.body : ""}`, n.read ? "read" : "");
}
function setUnread(count) { unread = count; document.getElementById("unread").textContent = count; }
function onMessage(frame) {
  lastIds[frame.topic] = frame.id;
  if (frame.topic === userTopic) {
    if (frame.event === "notification.created") {
      pushes += 1; showNotification(frame.data.notification); setUnread(frame.data.unread_count);
    } else add("notifications", `#${frame.id} ${frame.event} ${JSON.stringify(frame.data)}`);
  } else {
    if (frame.event === "video.liked") { likes += 1; document.getElementById("likes").textContent = likes; }
    add("feed", `#${frame.id} ${frame.event} ${JSON.stringify(frame.data)}`);
  }
}
function csrfToken() {
  const cookie = document.cookie.split("; ").find((c) => c.startsWith("csrftoken="));
  return cookie ? cookie.split("=")[1] : "";
}
let pushes = 0;             // notification frames received: tells a stale inbox count
async function loadInbox() {
  // The inbox is the source of truth; live frames only add to it (and a resync reloads it).
  const before = pushes;
  const response = await fetch("/api/notifications/", {credentials: "same-origin"});
  if (!response.ok) return;
  const page = await response.json();
  for (const n of page.results.slice().reverse()) showNotification(n);
  // A push that arrived meanwhile may be newer than this count: ask again.
  if (pushes !== before) return loadInbox();
  setUnread(page.unread_count);
}
function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws/`);
  ws.onopen = () => {
    delay = 500;
    for (const topic of [userTopic, roomTopic]) {
      const frame = {type: "subscribe", topic};
      if (topic in lastIds) frame.last_id = lastIds[topic];
      ws.send(JSON.stringify(frame));
    }
  };
  ws.onmessage = (event) => {
    const frame = JSON.parse(event.data);
    if (frame.type === "message") onMessage(frame);
    else if (frame.type === "subscribed") {
      // Load the inbox once the live subscription holds, so nothing falls in between.
      if (frame.topic === userTopic && !(frame.topic in lastIds)) loadInbox();
      lastIds[frame.topic] = frame.id; setState("live");
    }
    else if (frame.type === "resync") {
      // Too much was missed to replay: say so instead of showing a silent gap.
      lastIds[frame.topic] = frame.id;
      if (frame.topic === userTopic) loadInbox();
      else add("feed", "missed some messages: reload for the full list", "resync");
    } else if (frame.type === "error") add("feed", `error: ${frame.reason}`, "resync");
  };
  ws.onclose = () => {
    setState("reconnecting");
    setTimeout(connect, delay);
    delay = Math.min(delay * 2, 5000);
  };
}
document.getElementById("mark-read").onclick = async () => {
  const response = await fetch("/api/notifications/read-all/", {
    method: "POST", credentials: "same-origin", headers: {"X-CSRFToken": csrfToken()},
  });
  if (response.ok) setUnread((await response.json()).unread_count);
};
document.getElementById("like").onclick = () => {
  fetch("/live/like", {
    method: "POST",
    headers: {"X-CSRFToken": csrfToken()},
    body: new URLSearchParams({topic: roomTopic}),
  });
};
connect();
