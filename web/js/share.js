// Taking a run elsewhere: "Copy link" (the page's address with the form's settings) and "Use this
// from code" (the exact POST /sample call, as curl and as Python with the standard library only).
// The code builders are pure, so tests can run what they write.

/** A JSON value written as a Python literal (None, True, False; strings and numbers as JSON has them). */
export function pythonLiteral(value) {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (Array.isArray(value)) return `[${value.map(pythonLiteral).join(", ")}]`;
  if (typeof value === "object") {
    return `{${Object.entries(value)
      .map(([k, v]) => `${JSON.stringify(k)}: ${pythonLiteral(v)}`)
      .join(", ")}}`;
  }
  return JSON.stringify(value); // a JSON string or number is a valid Python one
}

/** The POST /sample call as a shell command: the images land in image-0.png, image-1.png, … */
export function curlCommand(url, body) {
  const json = JSON.stringify(body).replaceAll("'", "'\\''"); // inside single quotes, for any shell
  const save =
    "import base64, json, sys; r = json.load(sys.stdin)\n" +
    "for i, png in enumerate(r['images']): open(f'image-{i}.png', 'wb').write(base64.b64decode(png))\n" +
    "print('seed', r['seed'], 'took', r['elapsed_ms'], 'ms')";
  return `curl -sS --fail-with-body -X POST '${url}' \\\n  -H 'Content-Type: application/json' \\\n  -d '${json}' \\\n  | python3 -c "${save}"`;
}

/** The same call in Python, standard library only. */
export function pythonCode(url, body) {
  return `import base64
import json
import urllib.request

body = ${pythonLiteral(body)}
request = urllib.request.Request(
    ${JSON.stringify(url)},
    data=json.dumps(body).encode(),
    headers={"Content-Type": "application/json"},
)
with urllib.request.urlopen(request, timeout=600) as response:
    result = json.load(response)
for i, png in enumerate(result["images"]):
    with open(f"image-{i}.png", "wb") as f:
        f.write(base64.b64decode(png))
print("seed", result["seed"], "took", result["elapsed_ms"], "ms")
`;
}

/**
 * The DOM side: `current()` gives {request, seed} for the form as it stands (null while it is
 * invalid); the link and the code follow it whenever `refresh()` is called.
 */
export class Share {
  constructor({ current, linkFor }) {
    this.current = current;
    this.linkFor = linkFor;
    const $ = (id) => document.getElementById(id);
    this.el = {
      copy: $("copy-link"),
      status: $("copy-link-status"),
      curl: $("code-curl"),
      python: $("code-python"),
      note: $("code-note"),
    };
    this.el.copy.addEventListener("click", () => this.copyLink());
  }

  link() {
    const settings = this.current();
    return settings && new URL(this.linkFor(settings.request, settings.seed), window.location.href).href;
  }

  async copyLink() {
    const link = this.link();
    if (!link) {
      this.el.status.textContent = "Fix the marked settings first.";
      return;
    }
    this.el.copy.dataset.link = link;
    try {
      await navigator.clipboard.writeText(link);
      this.el.status.textContent = "Link copied: it opens this page with these settings.";
    } catch {
      // No clipboard (an insecure origin, or permission refused): show it to copy by hand.
      this.el.status.replaceChildren("Copy this link: ");
      const box = document.createElement("input");
      box.type = "text";
      box.readOnly = true;
      box.value = link;
      box.className = "copy-box";
      box.setAttribute("aria-label", "The link to these settings");
      this.el.status.append(box);
      box.select();
    }
  }

  refresh() {
    const settings = this.current();
    if (!settings) return; // keep the last valid code in view while a field is being fixed
    const { every, ...request } = settings.request; // POST /sample streams nothing
    const body = { ...request, seed: settings.seed ?? request.seed };
    const url = new URL("sample", document.baseURI).href;
    this.el.curl.textContent = curlCommand(url, body);
    this.el.python.textContent = pythonCode(url, body);
    this.el.note.textContent =
      body.seed == null
        ? "No seed is set, so each call draws its own: set one (or run once) to get the same images every time."
        : `With seed ${body.seed} it gives the same images as the page does with these settings.`;
  }
}
