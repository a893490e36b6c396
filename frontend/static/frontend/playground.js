// The playground: streams a chat completion from the gateway as the member's console key (the
// session cookie and the CSRF token stand for it; no key is in the page), then shows the reply's
// usage and cost from the ledger.
(function () {
  "use strict";
  var form = document.getElementById("playground");
  if (!form) return;
  var conversation = document.getElementById("pg-conversation");
  var send = document.getElementById("pg-send");
  var history = [];

  function csrfToken() {
    var match = document.cookie.match(/(?:^|; )csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  function bubble(role, text) {
    var item = document.createElement("div");
    item.className = "turn " + role;
    var who = document.createElement("strong");
    who.textContent = role === "user" ? "You" : "Model";
    var body = document.createElement("div");
    body.className = "text";
    body.textContent = text;
    item.appendChild(who);
    item.appendChild(body);
    conversation.appendChild(item);
    return item;
  }

  function note(item, text, isError) {
    var line = document.createElement("div");
    line.className = isError ? "error" : "muted usage";
    if (isError) line.setAttribute("role", "alert");
    line.textContent = text;
    item.appendChild(line);
    return line;
  }

  function showUsage(item, requestId, attempt) {
    var url = form.dataset.usageUrl.replace("REQUEST_ID", encodeURIComponent(requestId));
    fetch(url, { credentials: "same-origin" }).then(function (response) {
      if (response.status === 202) {
        if (attempt < 40) setTimeout(function () { showUsage(item, requestId, attempt + 1); }, 250);
        return null;
      }
      return response.ok ? response.json() : null;
    }).then(function (usage) {
      if (!usage) return;
      var line = note(item, usage.prompt_tokens + " prompt + " + usage.completion_tokens + " completion tokens · cost " +
        usage.cost + " " + usage.currency.toUpperCase() + " · " + usage.latency_ms + " ms");
      line.setAttribute("data-testid", "reply-usage");
    });
  }

  function number(name) {
    var value = form.elements[name].value;
    return value === "" ? null : Number(value);
  }

  var stop = document.getElementById("pg-stop");
  var invalid = document.getElementById("pg-invalid");
  var messageLabel = document.getElementById("pg-message-label");
  var pendingCalls = []; // the last reply's tool calls: the next message answers them

  form.elements.format.addEventListener("change", function () {
    document.getElementById("pg-schema-field").hidden = form.elements.format.value !== "json_schema";
  });

  // The answer format and tools as request fields, or a message saying what is not valid JSON.
  function structured() {
    var fields = {}, format = form.elements.format.value;
    if (format === "json_object") fields.response_format = { type: "json_object" };
    if (format === "json_schema") {
      try {
        fields.response_format = { type: "json_schema", json_schema: { name: "answer", schema: JSON.parse(form.elements.schema.value) } };
      } catch (error) { return "The JSON schema is not valid JSON: " + error.message; }
    }
    var tools = form.elements.tools.value.trim();
    if (tools) {
      try { fields.tools = JSON.parse(tools); } catch (error) { return "The tools are not valid JSON: " + error.message; }
      fields.tool_choice = form.elements.tool_choice.value;
    }
    return fields;
  }

  function askForResults(calls) {
    pendingCalls = calls;
    messageLabel.textContent = calls.length ? "Result of " + calls.map(function (c) { return c.function.name; }).join(", ") +
      " (sent as the tool's answer)" : "Your message";
  }
  var code = document.getElementById("pg-code");
  var running = null; // the AbortController of the reply being generated

  // A JSON value as a Python literal (JSON's string escapes are Python's too).
  function python(value) {
    if (value === null) return "None";
    if (value === true) return "True";
    if (value === false) return "False";
    if (Array.isArray(value)) return "[" + value.map(python).join(", ") + "]";
    if (typeof value === "object") {
      return "{" + Object.keys(value).map(function (k) { return JSON.stringify(k) + ": " + python(value[k]); }).join(", ") + "}";
    }
    return JSON.stringify(value);
  }

  // The call just made, as a customer would write it: the official SDK and curl.
  function showCode(body) {
    var base = window.location.origin + "/v1";
    var call = { model: body.model, messages: body.messages };
    if (body.temperature !== undefined) call.temperature = body.temperature;
    if (body.max_tokens !== undefined) call.max_tokens = body.max_tokens;
    ["response_format", "tools", "tool_choice"].forEach(function (key) { if (body[key] !== undefined) call[key] = body[key]; });
    var args = Object.keys(call).map(function (key) { return "    " + key + "=" + python(call[key]) + ","; });
    code.querySelector("[data-lang=python]").textContent = [
      "from openai import OpenAI", "",
      'client = OpenAI(base_url="' + base + '", api_key="YOUR_KEY")',
      "reply = client.chat.completions.create(", args.join("\n"), ")",
      call.tools ? "print(reply.choices[0].message.content, reply.choices[0].message.tool_calls)"
        : "print(reply.choices[0].message.content)"
    ].join("\n");
    code.querySelector("[data-lang=curl]").textContent = "curl " + base + "/chat/completions \\\n" +
      '  -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" \\\n' +
      "  -d '" + JSON.stringify(call).replace(/'/g, "'\\''") + "'";
    code.hidden = false;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var message = form.elements.message.value.trim();
    if (!message) return;
    var fields = structured();
    invalid.hidden = typeof fields !== "string";
    if (typeof fields === "string") { invalid.textContent = fields; return; }
    var system = form.elements.system.value.trim();
    var before = history.length, answered = pendingCalls;
    if (pendingCalls.length) { // the member's message is the result of every call the model made
      pendingCalls.forEach(function (call) { history.push({ role: "tool", tool_call_id: call.id, content: message }); });
      bubble("user", "Result: " + message);
    } else {
      history.push({ role: "user", content: message });
      bubble("user", message);
    }
    askForResults([]);
    form.elements.message.value = "";
    var reply = bubble("assistant", "");
    var text = reply.querySelector(".text");
    text.setAttribute("data-testid", "reply");
    var status = note(reply, "generating…", false);
    status.setAttribute("data-testid", "reply-status");
    var body = {
      model: form.elements.model.value,
      messages: (system ? [{ role: "system", content: system }] : []).concat(history),
      stream: true,
      stream_options: { include_usage: true }
    };
    var temperature = number("temperature"), maxTokens = number("max_tokens");
    if (temperature !== null) body.temperature = temperature;
    if (maxTokens !== null) body.max_tokens = maxTokens;
    Object.keys(fields).forEach(function (key) { body[key] = fields[key]; });
    showCode(body);
    var headers = { "Content-Type": "application/json", "X-CSRFToken": csrfToken() };
    headers[form.dataset.header] = form.dataset.organization;
    send.disabled = true;
    stop.hidden = false;
    running = new AbortController();
    var answer = "";
    var calls = []; // the reply's tool calls, their arguments joined from the stream's fragments
    var requestId = null;
    function showCalls() {
      text.textContent = (answer ? answer + "\n" : "") + calls.map(function (c) {
        return "Calls " + c.function.name + "(" + c.function.arguments + ")";
      }).join("\n");
    }
    function remember() {
      var turn = { role: "assistant", content: answer || null };
      if (calls.length) turn.tool_calls = calls;
      else turn.content = answer;
      history.push(turn);
      askForResults(calls);
    }
    fetch("/v1/chat/completions", {
      method: "POST", credentials: "same-origin", headers: headers, body: JSON.stringify(body), signal: running.signal
    })
      .then(function (response) {
        requestId = response.headers.get("x-request-id");
        if (!response.ok) {
          return response.json().then(function (error) {
            status.remove();
            note(reply, (error.error && error.error.message) || ("HTTP " + response.status), true);
            history.length = before;
            askForResults(answered);
          });
        }
        var reader = response.body.getReader();
        var decoder = new TextDecoder();
        var pending = "";
        var finish = null;
        function pump() {
          return reader.read().then(function (chunk) {
            if (chunk.done) {
              status.remove();
              if (finish === "length") {
                note(reply, "Cut off: the reply reached its token limit (raise Max tokens for longer replies).", false)
                  .setAttribute("data-testid", "reply-cut-off");
              }
              remember();
              if (requestId) showUsage(reply, requestId, 0);
              return;
            }
            pending += decoder.decode(chunk.value, { stream: true });
            var events = pending.split("\n\n");
            pending = events.pop();
            events.forEach(function (event) {
              event.split("\n").forEach(function (line) {
                if (line.indexOf("data: ") !== 0) return;
                var data = line.slice(6);
                if (data === "[DONE]") return;
                var parsed = JSON.parse(data);
                if (parsed.error) { note(reply, parsed.error.message, true); return; }
                (parsed.choices || []).forEach(function (choice) {
                  var piece = choice.delta && choice.delta.content;
                  if (piece) { answer += piece; text.textContent = answer; status.textContent = "generating…"; }
                  ((choice.delta && choice.delta.tool_calls) || []).forEach(function (fragment) {
                    var call = calls[fragment.index] = calls[fragment.index] ||
                      { id: fragment.id, type: "function", function: { name: "", arguments: "" } };
                    var fn = fragment.function || {};
                    call.function.name += fn.name || "";
                    call.function.arguments += fn.arguments || "";
                    showCalls();
                  });
                  if (choice.finish_reason) finish = choice.finish_reason;
                });
              });
            });
            return pump();
          });
        }
        return pump();
      })
      .catch(function (error) {
        status.remove();
        if (error.name === "AbortError") {
          // Stopped by the member: the gateway stops the model and bills what it generated.
          note(reply, "Stopped.", false).setAttribute("data-testid", "reply-stopped");
          calls = [];
          remember();
          if (requestId) showUsage(reply, requestId, 0);
          return;
        }
        note(reply, "The request failed: " + error, true);
        history.length = before;
        askForResults(answered);
      })
      .finally(function () {
        running = null;
        stop.hidden = true;
        send.disabled = false;
        form.elements.message.focus();
      });
  });

  stop.addEventListener("click", function () {
    if (running) running.abort();
  });

  document.getElementById("pg-reset").addEventListener("click", function () {
    history = [];
    conversation.textContent = "";
    askForResults([]);
  });
})();

// Compare texts: embeds each line with an embedding model (one /v1/embeddings call as the console
// key), then ranks every pair by cosine similarity and shows the call's tokens and cost.
(function () {
  "use strict";
  var form = document.getElementById("compare");
  if (!form) return;
  var result = document.getElementById("cmp-result");
  var send = document.getElementById("cmp-send");

  function cosine(a, b) {
    var dot = 0, na = 0, nb = 0;
    for (var i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
    return dot / Math.sqrt(na * nb);
  }

  function line(text, className) {
    var item = document.createElement("p");
    item.className = className;
    item.textContent = text;
    result.appendChild(item);
    return item;
  }

  function table(texts, vectors) {
    var pairs = [];
    for (var i = 0; i < texts.length; i++) {
      for (var j = i + 1; j < texts.length; j++) pairs.push([cosine(vectors[i], vectors[j]), texts[i], texts[j]]);
    }
    pairs.sort(function (x, y) { return y[0] - x[0]; });
    var grid = document.createElement("table");
    grid.setAttribute("data-testid", "similarities");
    var head = grid.insertRow();
    ["Similarity", "Text", "Text"].forEach(function (name) {
      var cell = document.createElement("th");
      cell.scope = "col";
      cell.textContent = name;
      head.appendChild(cell);
    });
    pairs.forEach(function (pair) {
      var row = grid.insertRow();
      row.insertCell().textContent = pair[0].toFixed(3);
      row.insertCell().textContent = pair[1];
      row.insertCell().textContent = pair[2];
    });
    var wrap = document.createElement("div");
    wrap.className = "table-wrap";
    wrap.appendChild(grid);
    result.appendChild(wrap);
  }

  function showUsage(requestId, attempt) {
    var url = form.dataset.usageUrl.replace("REQUEST_ID", encodeURIComponent(requestId));
    fetch(url, { credentials: "same-origin" }).then(function (response) {
      if (response.status === 202) {
        if (attempt < 40) setTimeout(function () { showUsage(requestId, attempt + 1); }, 250);
        return null;
      }
      return response.ok ? response.json() : null;
    }).then(function (usage) {
      if (!usage) return;
      line(usage.prompt_tokens + " tokens · cost " + usage.cost + " " + usage.currency.toUpperCase() + " · " +
        usage.latency_ms + " ms", "muted usage").setAttribute("data-testid", "compare-usage");
    });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var texts = form.elements.texts.value.split("\n").map(function (t) { return t.trim(); })
      .filter(function (t) { return t; });
    result.textContent = "";
    if (texts.length < 2 || texts.length > 8) {
      line("Write 2 to 8 texts, one per line.", "error").setAttribute("role", "alert");
      return;
    }
    var match = document.cookie.match(/(?:^|; )csrftoken=([^;]+)/);
    var headers = { "Content-Type": "application/json", "X-CSRFToken": match ? decodeURIComponent(match[1]) : "" };
    headers[form.dataset.header] = form.dataset.organization;
    send.disabled = true;
    var waiting = line("Embedding… (a model with no replica running starts one first)", "muted");
    var body = { model: form.elements.model.value, input: texts, encoding_format: "float" };
    fetch("/v1/embeddings", { method: "POST", credentials: "same-origin", headers: headers, body: JSON.stringify(body) })
      .then(function (response) {
        var requestId = response.headers.get("x-request-id");
        return response.json().then(function (answer) {
          waiting.remove();
          if (!response.ok) {
            line((answer.error && answer.error.message) || ("HTTP " + response.status), "error").setAttribute("role", "alert");
            return;
          }
          table(texts, answer.data.map(function (item) { return item.embedding; }));
          if (requestId) showUsage(requestId, 0);
        });
      })
      .catch(function (error) { waiting.remove(); line("The request failed: " + error, "error"); })
      .finally(function () { send.disabled = false; });
  });
})();
