// voiceedge demo: one WebRTC call to the edge, with setup timings, live stats and the event channel.
//
// Everything a test needs is on window.voiceedgeStats (times in milliseconds):
//   {state, error, sessionUrl, deleteStatus, dataChannel,
//    timings: {answer, ice, connected, firstAudio},      // ms from the click on "Call"
//    inbound: {packetsReceived, packetsLost, jitter, packetsPerSecond},
//    rtt, events: [...received JSON messages...]}
// and window.voiceedge = {call(), hangUp(), sample(), restartIce()}; sample() reads getStats() now;
// restartIce() restarts ICE on the live call (a re-offer PATCHed to the session, RFC 9725 §4.3)
// and resolves to the PATCH status.
"use strict";

(() => {
  const CALLS_URL = new URL("v1/realtime/calls", document.baseURI).href;
  const MAX_EVENTS = 500;

  const $ = (id) => document.getElementById(id);
  const button = $("call");
  const stateLabel = $("state");
  const errorBox = $("error");
  const remoteAudio = $("remote");
  const eventList = $("events");
  const dcLabel = $("dc-state");
  const sendForm = $("send");
  const eventInput = $("event-input");

  const stats = {
    state: "idle",
    error: null,
    sessionUrl: null,
    deleteStatus: null,
    dataChannel: "closed",
    timings: { answer: null, ice: null, connected: null, firstAudio: null },
    inbound: { packetsReceived: 0, packetsLost: 0, jitter: null, packetsPerSecond: null },
    rtt: null,
    events: [],
  };
  window.voiceedgeStats = stats;

  // The call in progress; every async step checks it is still the current one,
  // so a hang-up in the middle of setup leaves nothing behind.
  let current = null;

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const round1 = (x) => Math.round(x * 10) / 10;

  function resetStats() {
    stats.error = null;
    stats.sessionUrl = null;
    stats.deleteStatus = null;
    stats.timings = { answer: null, ice: null, connected: null, firstAudio: null };
    stats.inbound = { packetsReceived: 0, packetsLost: 0, jitter: null, packetsPerSecond: null };
    stats.rtt = null;
    stats.events = [];
    eventList.replaceChildren();
    errorBox.hidden = true;
    errorBox.textContent = "";
    render();
  }

  function setState(state) {
    stats.state = state;
    stateLabel.textContent = state;
    stateLabel.dataset.state = state;
  }

  function setDataChannel(state) {
    stats.dataChannel = state;
    dcLabel.textContent = state;
  }

  function setButton(inCall) {
    button.textContent = inCall ? "Hang up" : "Call";
    button.classList.toggle("active", inCall);
  }

  function showError(message) {
    stats.error = message;
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  function mark(call, name) {
    if (stats.timings[name] === null) {
      stats.timings[name] = round1(performance.now() - call.t0);
      render();
    }
  }

  const fmt = (value, digits = 0, unit = " ms") =>
    value === null || value === undefined ? "–" : `${value.toFixed(digits)}${unit}`;

  function render() {
    for (const name of Object.keys(stats.timings)) {
      $(`t-${name}`).textContent = fmt(stats.timings[name]);
    }
    $("s-rtt").textContent = fmt(stats.rtt, 1);
    $("s-jitter").textContent = fmt(stats.inbound.jitter, 1);
    $("s-lost").textContent = String(stats.inbound.packetsLost);
    $("s-pps").textContent = fmt(stats.inbound.packetsPerSecond, 0, "");
    $("s-received").textContent = String(stats.inbound.packetsReceived);
  }

  function snapshot() {
    return JSON.parse(JSON.stringify(stats));
  }

  function addEventLine(direction, text) {
    const item = document.createElement("li");
    item.className = direction;
    const dir = document.createElement("span");
    dir.className = "dir";
    dir.textContent = direction === "in" ? "←" : "→";
    item.append(dir, document.createTextNode(text));
    eventList.append(item);
    while (eventList.childElementCount > MAX_EVENTS) eventList.firstElementChild.remove();
    eventList.scrollTop = eventList.scrollHeight;
  }

  function onMessage(data) {
    if (typeof data !== "string") {
      const size = data.byteLength ?? data.size ?? 0;
      addEventLine("in", `[binary message, ${size} bytes]`);
      return;
    }
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      message = { raw: data };
    }
    stats.events.push(message);
    if (stats.events.length > MAX_EVENTS) stats.events.shift();
    addEventLine("in", JSON.stringify(message));
  }

  function openChannel(call) {
    // The server may reject the data channel (port 0 in the answer): the call still works.
    const channel = call.pc.createDataChannel("oai-events");
    call.channel = channel;
    setDataChannel("connecting");
    channel.addEventListener("open", () => current === call && setDataChannel("open"));
    channel.addEventListener("close", () => current === call && setDataChannel("closed"));
    channel.addEventListener("error", () => current === call && setDataChannel("error"));
    channel.addEventListener("message", (ev) => current === call && onMessage(ev.data));
  }

  function findStats(report) {
    let inbound = null;
    let remoteInbound = null;
    let pair = null;
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio") inbound = s;
      else if (s.type === "remote-inbound-rtp" && s.kind === "audio") remoteInbound = s;
      else if (s.type === "transport" && s.selectedCandidatePairId) {
        pair = report.get(s.selectedCandidatePairId) || pair;
      }
    });
    if (!pair) {
      report.forEach((s) => {
        if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
      });
    }
    return { inbound, remoteInbound, pair };
  }

  // Read getStats() now and update window.voiceedgeStats; returns a copy.
  async function sample(call = current) {
    if (!call || !call.pc) return snapshot();
    const report = await call.pc.getStats();
    if (call !== current) return snapshot();
    const { inbound, remoteInbound, pair } = findStats(report);
    if (inbound) {
      const received = inbound.packetsReceived || 0;
      stats.inbound.packetsReceived = received;
      stats.inbound.packetsLost = inbound.packetsLost || 0;
      stats.inbound.jitter = typeof inbound.jitter === "number" ? round1(inbound.jitter * 1000) : null;
      if (received > 0) mark(call, "firstAudio");
      const at = inbound.timestamp;
      if (!call.last) {
        call.last = { at, received };
      } else if (at - call.last.at >= 500) {
        stats.inbound.packetsPerSecond = round1(((received - call.last.received) * 1000) / (at - call.last.at));
        call.last = { at, received };
      }
    }
    if (remoteInbound && typeof remoteInbound.roundTripTime === "number") {
      stats.rtt = round1(remoteInbound.roundTripTime * 1000);
    } else if (pair && typeof pair.currentRoundTripTime === "number") {
      stats.rtt = round1(pair.currentRoundTripTime * 1000);
    }
    render();
    return snapshot();
  }

  async function watchFirstAudio(call) {
    while (current === call && stats.timings.firstAudio === null) {
      await sample(call);
      if (stats.timings.firstAudio === null) await sleep(20);
    }
  }

  function deleteSession(url) {
    return fetch(url, { method: "DELETE", keepalive: true })
      .then((resp) => {
        stats.deleteStatus = resp.status;
      })
      .catch(() => {
        stats.deleteStatus = -1;
      });
  }

  function closePeer(call) {
    if (call.channel) call.channel.close();
    if (call.pc) call.pc.close();
  }

  function hangUp(finalState = "closed") {
    const call = current;
    if (!call) return;
    current = null;
    for (const timer of call.timers) clearInterval(timer);
    call.timers = [];
    if (call.mic) call.mic.getTracks().forEach((track) => track.stop());
    remoteAudio.srcObject = null;
    setDataChannel("closed");
    setState(finalState);
    setButton(false);
    // Close the connection once the server has had the DELETE (or after a
    // second): closing first would end the session by DTLS close_notify,
    // racing the DELETE to a 404.
    const deleted = call.sessionUrl ? deleteSession(call.sessionUrl) : Promise.resolve();
    Promise.race([deleted, sleep(1000)]).then(() => closePeer(call));
  }

  function fail(call, err) {
    if (current !== call) return;
    showError(err && err.message ? err.message : String(err));
    hangUp("failed");
  }

  async function startCall() {
    if (current) return;
    const call = {
      t0: performance.now(), pc: null, mic: null, channel: null, sessionUrl: null, etag: null, timers: [], last: null,
    };
    current = call;
    resetStats();
    setState("starting");
    setButton(true);
    try {
      if (!navigator.mediaDevices || !window.RTCPeerConnection) {
        throw new Error("this page needs WebRTC and a secure context (https or localhost)");
      }
      const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
      if (current !== call) {
        mic.getTracks().forEach((track) => track.stop());
        return;
      }
      call.mic = mic;
      const pc = new RTCPeerConnection({ iceServers: [] });
      call.pc = pc;
      pc.addEventListener("track", (ev) => {
        if (current === call) remoteAudio.srcObject = ev.streams[0] || new MediaStream([ev.track]);
      });
      pc.addEventListener("iceconnectionstatechange", () => {
        if (current !== call) return;
        const s = pc.iceConnectionState;
        if (s === "connected" || s === "completed") mark(call, "ice");
        else if (s === "failed") fail(call, new Error("ICE failed"));
      });
      pc.addEventListener("connectionstatechange", () => {
        if (current !== call) return;
        const s = pc.connectionState;
        if (s === "connected") {
          mark(call, "connected");
          setState("connected");
        } else if (s === "disconnected") {
          setState("disconnected");
        } else if (s === "failed") {
          fail(call, new Error("connection failed (ICE or DTLS)"));
        }
      });
      for (const track of mic.getAudioTracks()) pc.addTrack(track, mic);
      openChannel(call);

      await pc.setLocalDescription(await pc.createOffer());
      if (current !== call) return;
      // The server is ICE-lite and we are controlling: no need to wait for gathering.
      setState("offering");
      const resp = await fetch(CALLS_URL, {
        method: "POST",
        headers: { "Content-Type": "application/sdp" },
        body: pc.localDescription.sdp,
      });
      const text = await resp.text();
      const location = resp.headers.get("Location");
      const sessionUrl = location ? new URL(location, resp.url).href : null;
      if (current !== call) {
        // Hung up while the offer was in flight: end what the server opened.
        if (resp.status === 201 && sessionUrl) deleteSession(sessionUrl);
        return;
      }
      if (resp.status !== 201) {
        throw new Error(`the server refused the call: ${resp.status} ${text.trim()}`);
      }
      call.sessionUrl = sessionUrl;
      call.etag = resp.headers.get("ETag");
      stats.sessionUrl = sessionUrl;
      mark(call, "answer");
      setState("connecting");
      await pc.setRemoteDescription({ type: "answer", sdp: text });
      if (current !== call) return;
      call.timers.push(setInterval(() => sample(call).catch(() => {}), 1000));
      watchFirstAudio(call).catch(() => {});
    } catch (err) {
      fail(call, err);
    }
  }

  // ICE restart on the live call, as after a network change: new ICE credentials
  // both ways, the same DTLS and SRTP, audio carrying on.
  async function restartIce() {
    const call = current;
    if (!call || !call.pc || !call.sessionUrl) throw new Error("no call to restart");
    call.pc.restartIce();
    const offer = await call.pc.createOffer();
    await call.pc.setLocalDescription(offer);
    const resp = await fetch(call.sessionUrl, {
      method: "PATCH",
      headers: { "Content-Type": "application/sdp", "If-Match": "*" },
      body: call.pc.localDescription.sdp,
    });
    const text = await resp.text();
    if (current !== call) return resp.status;
    if (resp.status !== 200) throw new Error(`ICE restart refused: ${resp.status} ${text.trim()}`);
    call.etag = resp.headers.get("ETag");
    await call.pc.setRemoteDescription({ type: "answer", sdp: text });
    return resp.status;
  }

  button.addEventListener("click", () => (current ? hangUp() : startCall()));

  sendForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = eventInput.value.trim();
    if (!text) return;
    let message;
    try {
      message = JSON.parse(text);
    } catch (err) {
      showError(`not JSON: ${err.message}`);
      return;
    }
    const channel = current && current.channel;
    if (!channel || channel.readyState !== "open") {
      showError("the oai-events data channel is not open");
      return;
    }
    errorBox.hidden = true;
    const wire = JSON.stringify(message);
    channel.send(wire);
    addEventLine("out", wire);
    eventInput.value = "";
  });

  window.addEventListener("pagehide", () => {
    if (current && current.sessionUrl) deleteSession(current.sessionUrl);
  });

  window.voiceedge = {
    call: startCall,
    hangUp: () => hangUp(),
    sample: () => sample(current),
    restartIce: () => restartIce(),
  };
  render();
})();
