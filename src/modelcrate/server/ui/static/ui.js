// modelcrate web UI: the try-it form (JSON or an image turned into a tensor in the
// browser) and the admin alias actions. No third-party code, no network beyond this server.
"use strict";

function render(result, target) {
  target.textContent = "";
  if (result.error) { target.innerHTML = ""; const p = document.createElement("p"); p.className = "error"; p.textContent = result.error; target.append(p); return; }
  for (const [name, out] of Object.entries(result.outputs)) {
    const h = document.createElement("h3"); h.textContent = `${name} ${JSON.stringify(out.shape)}`; target.append(h);
    if (out.top) {
      const table = document.createElement("table"); table.className = "top";
      for (const row of out.top) {
        const tr = table.insertRow(); tr.insertCell().textContent = row.label;
        const cell = tr.insertCell(); const bar = document.createElement("span"); bar.className = "bar";
        bar.style.width = `${Math.max(2, Math.round(200 * row.share))}px`; cell.append(bar, ` ${row.score.toFixed(4)}`);
      }
      target.append(table);
    } else {
      const pre = document.createElement("pre"); pre.textContent = JSON.stringify(out.data).slice(0, 2000); target.append(pre);
    }
  }
}

function imageToTensor(file, shape) {
  // shape like [-1, C, H, W] (or [N, H, W, C] is not handled): grayscale or RGB in [0, 1]
  const [, channels, height, width] = shape;
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => {
      const canvas = document.createElement("canvas"); canvas.width = width; canvas.height = height;
      const ctx = canvas.getContext("2d"); ctx.drawImage(img, 0, 0, width, height);
      const pixels = ctx.getImageData(0, 0, width, height).data;
      const planes = [];
      for (let c = 0; c < channels; c++) {
        const plane = [];
        for (let y = 0; y < height; y++) {
          const row = [];
          for (let x = 0; x < width; x++) {
            const i = 4 * (y * width + x);
            const value = channels === 1 ? (pixels[i] + pixels[i + 1] + pixels[i + 2]) / 3 : pixels[i + c];
            row.push(+(value / 255).toFixed(4));
          }
          plane.push(row);
        }
        planes.push(plane);
      }
      resolve([planes]);
    };
    img.onerror = () => reject(new Error("not an image this browser can read"));
    img.src = URL.createObjectURL(file);
  });
}

const tryForm = document.getElementById("try-form");
if (tryForm) {
  const input = document.getElementById("try-input");
  const result = document.getElementById("try-result");
  const image = document.getElementById("try-image");
  if (image) {
    image.addEventListener("change", async () => {
      try { input.value = JSON.stringify(await imageToTensor(image.files[0], JSON.parse(tryForm.dataset.shape))); }
      catch (e) { render({ error: e.message }, result); }
    });
  }
  tryForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    result.textContent = "running…";
    let body;
    try { body = JSON.stringify({ inputs: JSON.parse(input.value) }); }
    catch (e) { render({ error: `inputs are not valid JSON: ${e.message}` }, result); return; }
    const response = await fetch(tryForm.dataset.url, { method: "POST", headers: { "content-type": "application/json" }, body });
    render(await response.json(), result);
  });
}

const admin = document.getElementById("admin");
if (admin) {
  for (const button of admin.querySelectorAll("button[data-action]")) {
    button.addEventListener("click", async () => {
      const data = Object.fromEntries(new FormData(admin));
      const url = `${admin.dataset.base}/api/models/${admin.dataset.name}/aliases/${encodeURIComponent(data.alias)}/${button.dataset.action}`;
      const response = await fetch(url, { method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${data.token}` }, body: JSON.stringify({ version: data.version, allow_breaking: data.allow_breaking === "on" }) });
      const answer = await response.json();
      document.getElementById("admin-result").textContent = answer.error || `${data.alias} → ${answer.version}`;
      if (!answer.error) setTimeout(() => location.reload(), 300);
    });
  }
}
