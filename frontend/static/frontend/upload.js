// Uploads with a progress bar: the form is sent with XMLHttpRequest (fetch reports no upload
// progress); the server answers with where the file's validation report is, or why it refused.
(function () {
  "use strict";
  var form = document.getElementById("upload");
  if (!form) return;
  var bar = document.getElementById("upload-progress");
  var percent = document.getElementById("upload-percent");
  var error = document.getElementById("upload-error");
  form.addEventListener("submit", function (event) {
    if (!window.FormData || !form.elements.file.files.length) return;  // the plain form post says what is missing
    event.preventDefault();
    var request = new XMLHttpRequest();
    request.open("POST", window.location.pathname);
    request.setRequestHeader("X-Requested-With", "upload");
    request.setRequestHeader("X-CSRFToken", form.elements.csrfmiddlewaretoken.value);
    bar.hidden = false;
    error.hidden = true;
    request.upload.addEventListener("progress", function (progress) {
      if (!progress.lengthComputable) return;
      var done = Math.round((100 * progress.loaded) / progress.total);
      bar.value = done;
      percent.textContent = done + " %";
    });
    request.addEventListener("load", function () {
      var answer = {};
      try { answer = JSON.parse(request.responseText); } catch (ignored) { answer = {}; }
      if (answer.redirect) { window.location = answer.redirect; return; }
      bar.hidden = true;
      percent.textContent = "";
      error.textContent = answer.error || ("The upload failed (HTTP " + request.status + ").");
      error.hidden = false;
    });
    request.addEventListener("error", function () {
      error.textContent = "The upload did not reach the server; check the connection and try again.";
      error.hidden = false;
    });
    request.send(new FormData(form));
  });
})();
