// KeyGrid HSM console: the only script. Pages work without it; it only
// keeps a confirmation button disabled until the key's name is typed (the
// server checks the name again).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("input[data-confirm], input[data-confirm-for]").forEach(function (input) {
    var form = input.form;
    var button = form && form.querySelector("button[type=submit]");
    if (!button) { return; }
    var expected = function () {
      if (input.dataset.confirm !== undefined) { return input.dataset.confirm; }
      var other = document.getElementById(input.dataset.confirmFor);
      return other ? other.value.trim() : "";
    };
    var update = function () { button.disabled = input.value.trim() === "" || input.value.trim() !== expected(); };
    input.addEventListener("input", update);
    var other = input.dataset.confirmFor && document.getElementById(input.dataset.confirmFor);
    if (other) { other.addEventListener("input", update); }
    update();
  });
});
