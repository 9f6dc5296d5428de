"""The page itself: three Gradio tabs (Generate, Score, Complete) over `Handlers`.

Events run with `preprocess=False`: every control's raw value reaches the handler, which checks it (so a bad
value sent to the HTTP API gets the same message as one typed in the page, and an upload that is not an image
is refused by us with a message instead of failing inside Gradio's decoder). All events share one queue group,
so at most `concurrency` requests sample at a time and the rest wait their turn, their place shown.
"""

from __future__ import annotations

from .handlers import Handlers, friendly

IMAGE_HEIGHT = 224  # the model's 64-pixel pictures, shown larger (pixelated, not blurred)
CSS = """
.pixelated img, .pixelated canvas { image-rendering: pixelated; }
.upscaled img { width: 176px !important; height: 176px !important; object-fit: contain; }
#status-generate, #status-score, #status-complete { min-height: 2em; }
"""

GENERATE_HELP = (
    "One prompt per line. An empty seed draws a fresh one each time, shown under each image; a fixed seed with the "
    "same settings gives the same images as `python sample.py PROMPT --seed SEED`. Each image is the best of its "
    "candidates by the model's own score (DALL-E's re-ranking; 1 candidate: plain sampling)."
)
SCORE_HELP = (
    "Upload an image and give captions, one per line: they are ranked by pmi = log p(image | caption) − "
    "log p(image | no caption), the model used as a zero-shot classifier; bits/dim is the image's cost under the "
    "prior. What the model sees is the image after its round trip through the image tokenizer."
)
COMPLETE_HELP = (
    "Upload an image and keep its top rows of image codes: the model completes the rest from the prompt "
    "(DALL-E, Fig. 2). The left picture shows the rows kept; the darkened part is sampled anew."
)


def _upload_path(value) -> str | None:
    """An image control's raw value (a FileData dict with `path`, or a path) -> the uploaded file's path."""
    if isinstance(value, dict):
        return value.get("path")
    return value or None


SLIDERS_FOLLOWING_THE_MODEL = ("guidance_scale", "temperature", "top_k", "top_p", "num_candidates")


def slider_values(settings: dict) -> list:
    """A model's sampling settings -> the values of the sliders that follow the model picker: the Generate tab's
    guidance, temperature, top-k, top-p and candidates, then the Complete tab's guidance and temperature."""
    return [settings[k] for k in SLIDERS_FOLLOWING_THE_MODEL] + [settings["guidance_scale"], settings["temperature"]]


def build_app(handlers: Handlers, concurrency: int = 1):
    """The gr.Blocks page for `handlers`' models (launch it with `server.launch`)."""
    import gradio as gr

    models = handlers.models
    names = list(models)
    first = models[names[0]].pipe
    max_codes = max(m.pipe.prior.config.num_image_codes for m in models.values())
    max_grid = max(m.pipe.prior.config.image_grid for m in models.values())
    lim = handlers.limits
    start = first.sampling_defaults  # the sliders start at the first model's own settings, and follow the picker
    queued = dict(preprocess=False, concurrency_limit=concurrency, concurrency_id="models")

    def sampling_controls(tab: str, candidates: int, with_top: bool, images_label: str = "Images per prompt"):
        """The sampling sliders of one tab, at the first model's sampling settings (`candidates`: this tab's)."""
        with gr.Row():
            images = gr.Slider(1, lim.max_images, value=4, step=1, label=images_label, elem_id=f"{tab}-images")
            n_candidates = gr.Slider(
                1,
                lim.max_candidates,
                value=candidates,
                step=1,
                label="Candidates per image",
                elem_id=f"{tab}-candidates",
            )
        with gr.Row():
            guidance = gr.Slider(
                1,
                lim.max_guidance,
                value=start["guidance_scale"],
                step=0.1,
                label="Guidance (1: off)",
                elem_id=f"{tab}-guidance",
            )
            temperature = gr.Slider(
                0,
                lim.max_temperature,
                value=start["temperature"],
                step=0.05,
                label="Temperature",
                elem_id=f"{tab}-temperature",
            )
        top = []
        if with_top:
            with gr.Row():
                top = [
                    gr.Slider(
                        0, max_codes, value=start["top_k"], step=1, label="Top-k (0: all codes)", elem_id=f"{tab}-top-k"
                    ),
                    gr.Slider(0.01, 1, value=start["top_p"], step=0.01, label="Top-p", elem_id=f"{tab}-top-p"),
                ]
        seed = gr.Textbox(value="", label="Seed", placeholder="random", max_lines=1, elem_id=f"{tab}-seed")
        return images, guidance, temperature, top, n_candidates, seed

    with gr.Blocks(title="minidalle", analytics_enabled=False) as app:
        with gr.Row():
            gr.Markdown(
                "## minidalle\n"
                + "\n".join(f"- {name}: {m.about}" for name, m in models.items())
                + "\n\nImages are drawn on this machine; nothing leaves it."
            )
            model = gr.Dropdown(names, value=names[0], label="Model", elem_id="model", scale=0, min_width=240)

        with gr.Tab("Generate", id="generate"):
            gr.Markdown(GENERATE_HELP)
            with gr.Row():
                with gr.Column(scale=2):
                    prompt = gr.Textbox(
                        lines=3,
                        label="Prompt (one per line)",
                        placeholder="a small red circle in the top left",
                        elem_id="prompt",
                    )
                    generate = gr.Button("Generate", variant="primary", elem_id="generate-button")
                    images, guidance, temperature, (top_k, top_p), candidates, seed = sampling_controls(
                        "generate", start["num_candidates"], True
                    )
                with gr.Column(scale=3):
                    gallery = gr.Gallery(
                        label="Images",
                        columns=4,
                        height="auto",
                        format="png",
                        buttons=["download", "download_all", "fullscreen"],
                        elem_id="gallery",
                        elem_classes=["pixelated"],
                    )
                    status = gr.Markdown(elem_id="status-generate")
            for title, pick in (("Example prompts", "examples"), ("Zero-shot prompts", "zero_shot_examples")):
                rows = [[p, name] for name, m in models.items() for p in getattr(m, pick)]
                if rows:
                    label = title + (": colour–shape pairs never seen in training" if "Zero" in title else "")
                    if len(names) == 1:  # one model: the prompt column alone
                        gr.Examples([row[:1] for row in rows], inputs=[prompt], label=label)
                    else:
                        gr.Examples(rows, inputs=[prompt, model], label=label)
            inputs = [model, prompt, images, guidance, temperature, top_k, top_p, candidates, seed]
            generate.click(friendly(([],))(handlers.generate), inputs, [gallery, status], api_name="generate", **queued)

        with gr.Tab("Score", id="score"):
            gr.Markdown(SCORE_HELP)
            with gr.Row():
                with gr.Column():
                    score_image = gr.Image(
                        type="filepath",
                        label="Image",
                        sources=["upload", "clipboard"],
                        height=IMAGE_HEIGHT,
                        elem_id="score-image",
                        elem_classes=["pixelated", "upscaled"],
                    )
                    captions = gr.Textbox(
                        lines=5,
                        label="Captions (one per line)",
                        placeholder="a red circle\na blue circle\na green circle",
                        elem_id="captions",
                    )
                    score = gr.Button("Score", variant="primary", elem_id="score-button")
                with gr.Column():
                    table = gr.Dataframe(
                        headers=["rank", "caption", "pmi (nats)", "log p (nats)", "bits/dim"],
                        label="Captions, most likely first",
                        interactive=False,
                        elem_id="score-table",
                    )
                    seen = gr.Image(
                        label="What the model sees",
                        interactive=False,
                        format="png",
                        height=IMAGE_HEIGHT,
                        elem_id="score-seen",
                        elem_classes=["pixelated", "upscaled"],
                    )
                    score_status = gr.Markdown(elem_id="status-score")
            score.click(
                friendly(([], None))(lambda m, image, text: handlers.score(m, _upload_path(image), text)),
                [model, score_image, captions],
                [table, seen, score_status],
                api_name="score",
                **queued,
            )

        with gr.Tab("Complete", id="complete"):
            gr.Markdown(COMPLETE_HELP)
            with gr.Row():
                with gr.Column(scale=2):
                    complete_image = gr.Image(
                        type="filepath",
                        label="Image",
                        sources=["upload", "clipboard"],
                        height=IMAGE_HEIGHT,
                        elem_id="complete-image",
                        elem_classes=["pixelated", "upscaled"],
                    )
                    complete_prompt = gr.Textbox(
                        lines=1, label="Prompt", placeholder="a red square on the left", elem_id="complete-prompt"
                    )
                    keep_rows = gr.Slider(
                        0,
                        max_grid,
                        value=first.prior.config.image_grid // 2,
                        step=1,
                        label="Rows of codes kept",
                        elem_id="complete-keep-rows",
                    )
                    complete = gr.Button("Complete", variant="primary", elem_id="complete-button")
                    c_images, c_guidance, c_temperature, _, c_candidates, c_seed = sampling_controls(
                        "complete", 1, False, "Completions"
                    )
                with gr.Column(scale=3):
                    kept = gr.Image(
                        label="Rows kept",
                        interactive=False,
                        format="png",
                        height=IMAGE_HEIGHT,
                        elem_id="complete-kept",
                        elem_classes=["pixelated", "upscaled"],
                    )
                    completions = gr.Gallery(
                        label="Completions",
                        columns=4,
                        height="auto",
                        format="png",
                        buttons=["download", "download_all", "fullscreen"],
                        elem_id="completions",
                        elem_classes=["pixelated"],
                    )
                    complete_status = gr.Markdown(elem_id="status-complete")
            complete.click(
                friendly((None, []))(lambda m, image, *rest: handlers.complete(m, _upload_path(image), *rest)),
                [model, complete_image, complete_prompt, keep_rows]
                + [c_images, c_guidance, c_temperature, c_candidates, c_seed],
                [kept, completions, complete_status],
                api_name="complete",
                **queued,
            )

        def follow(name):
            return slider_values(models[name].pipe.sampling_defaults if name in models else start)

        model.change(
            follow,
            [model],
            [guidance, temperature, top_k, top_p, candidates, c_guidance, c_temperature],
            api_name=False,
            queue=False,
        )
    return app
