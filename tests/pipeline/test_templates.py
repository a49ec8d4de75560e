"""pipeline.templates: the official "deepseek" format per kind, prompts, grounding boxes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline import templates
from pipeline.templates import Block, TemplateConfig, TemplateError, render
from schemas.sample import sample_id_for

U, A = "<|User|>", "<|Assistant|>"
REF, REF_END, DET, DET_END = "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>"


def text(value, turn=0, role=None):
    return {"turn": turn, "role": role, "type": "text", "text": value, "image": None}


def image(index, turn=0, role=None):
    return {"turn": turn, "role": role, "type": "image", "text": None, "image": index}


def picture(width=640, height=480):
    return {"bytes": b"x", "path": "p.png", "width": width, "height": height, "format": "PNG"}


def region(phrase, boxes, image=0, segment=None, start=None, end=None):
    return {"phrase": phrase, "image": image, "boxes": boxes, "segment": segment, "start": start, "end": end}


def sample(kind, content, images=(), regions=(), key="k"):
    return {
        "sample_id": sample_id_for("src", key),
        "source": "src",
        "key": key,
        "kind": kind,
        "content": list(content),
        "images": list(images),
        "regions": list(regions),
        "meta": "{}",
    }


def prompt(name, s):
    return templates.choose_prompt(templates.load_prompts()[name], s["sample_id"], name)


# ----------------------------------------------------------------------------------------------------
# chat


def test_conversation_as_given_with_system_and_stripping():
    s = sample(
        "conversation",
        [
            text(" Be brief. ", 0, "system"),
            image(0, 1, "user"),
            text("\nWhat is this?  ", 1, "user"),
            text("  A cat. ", 2, "assistant"),
            text("Why?", 3, "user"),
            text("It <|ref|>purrs<|/ref|>.", 4, "assistant"),
        ],
        [picture()],
    )
    out = render(s)
    assert out.render == "chat" and out.images == (0,)
    assert out.blocks == (
        Block(("Be brief.",), loss=False, eos=False),  # stripped, on its own, no separator after it
        Block((U, ": ", 0, "\nWhat is this?\n\n", A, ":"), loss=False, eos=False),
        Block(("A cat.",), loss=True, eos=True),
        Block((U, ": Why?\n\n", A, ":"), loss=False, eos=False),
        Block(("It ", REF, "purrs", REF_END, "."), loss=True, eos=True),
    )


def test_configured_system_text_is_rendered_as_a_system_message():
    s = sample("conversation", [text("Hi", 0, "user"), text("Hello", 1, "assistant")])
    (system, first, answer) = render(s, TemplateConfig(system=" You help.\n")).blocks
    assert system == Block(("You help.",), loss=False, eos=False)
    assert first.parts == (U, ": Hi\n\n", A, ":")
    assert answer.parts == ("Hello",)
    # The sample's own system message wins over the configured one.
    own = sample(
        "conversation",
        [text("Be terse.", 0, "system"), text("Hi", 1, "user"), text("Hello", 2, "assistant")],
    )
    assert render(own, TemplateConfig(system="You help.")).blocks[0].parts == ("Be terse.",)
    # A blank system text renders nothing.
    assert render(s, TemplateConfig(system="  ")).blocks[0].parts == (U, ": Hi\n\n", A, ":")


def test_empty_turns_render_as_the_official_processor_renders_them():
    s = sample(
        "conversation",
        [
            text("  ", 0, "user"),
            text("Hi", 1, "assistant"),
            text("Why?", 2, "user"),
            text(" \n", 3, "assistant"),
        ],
    )
    assert render(s).blocks == (
        Block((U, ":", A, ":"), loss=False, eos=False),
        Block(("Hi",), loss=True, eos=True),
        Block((U, ": Why?\n\n", A, ":"), loss=False, eos=False),
        Block((), loss=True, eos=True),  # an empty answer: only its eos is trained
    )


def test_special_token_strings_in_data_text():
    """The grounding markup becomes tokens; role and control strings stay text; `<image>` is an error."""
    s = sample(
        "conversation",
        [
            text("Type <|User|> here <|ref|>", 0, "user"),
            text("<|Assistant|> <｜end▁of▁sentence｜>", 1, "assistant"),
        ],
    )
    user, answer = render(s).blocks
    assert user.parts == (U, ": Type <|User|> here ", REF, "\n\n", A, ":")
    assert answer.parts == ("<|Assistant|> <｜end▁of▁sentence｜>",)
    assert [type(part) for part in user.parts] == [
        templates.Token,
        str,
        templates.Token,
        str,
        templates.Token,
        str,
    ]
    assert all(type(part) is str for part in answer.parts)


def test_text_of_a_turn_split_around_an_image_is_joined():
    s = sample(
        "conversation",
        [text("Look ", 0, "user"), image(0, 0, "user"), text(" here", 0, "user"), text("ok", 1, "assistant")],
        [picture()],
    )
    assert render(s).blocks[0].parts == (U, ": Look ", 0, " here\n\n", A, ":")


def test_caption_as_chat_with_a_shipped_prompt():
    s = sample("caption", [image(0), text(" A red bike.\n")], [picture()])
    out = render(s)
    chosen = prompt("caption", s)
    assert chosen in templates.load_prompts()["caption"]
    assert out.blocks == (
        Block((U, ": ", 0, f"\n{chosen}\n\n", A, ":"), loss=False, eos=False),
        Block(("A red bike.",), loss=True, eos=True),
    )


def test_ocr_transcription_and_grounded_lines():
    s = sample("ocr", [image(0), text("OPEN\nDAILY")], [picture(1000, 500)])
    out = render(s)
    assert out.blocks[0].parts == (U, ": ", 0, f"\n{prompt('ocr', s)}\n\n", A, ":")
    assert out.blocks[1].parts == ("OPEN\nDAILY",)

    grounded = sample(
        "ocr",
        [image(0), text("OPEN\nDAILY")],
        [picture(1000, 500)],
        [region("OPEN", [[100, 50, 300, 100]]), region("DAILY", [[100, 150, 400, 200]])],
    )
    user, answer = render(grounded).blocks
    assert user.parts == (
        U,
        ": ",
        0,
        "\n",
        "<|grounding|>",
        prompt("ocr_grounded", grounded).split(">", 1)[1] + "\n\n",
        A,
        ":",
    )
    assert answer.parts == (
        REF, "OPEN", REF_END, DET, "[[100, 100, 300, 200]]", DET_END, "\n",
        REF, "DAILY", REF_END, DET, "[[100, 300, 400, 400]]", DET_END,
    )  # fmt: skip


def test_referring_expressions_one_turn_each_boxes_of_one_phrase_together():
    s = sample(
        "grounding",
        [image(0)],
        [picture(999, 999)],
        [
            region("the red car", [[10, 20, 30, 40]]),
            region("a dog", [[0, 0, 999, 999]]),
            region("the red car", [[500, 600, 700, 800]]),
        ],
    )
    blocks = render(s).blocks
    assert [b.parts for b in blocks] == [
        (U, ": ", 0, "\nLocate ", REF, "the red car", REF_END, " in the given image.\n\n", A, ":"),
        (REF, "the red car", REF_END, DET, "[[10, 20, 30, 40], [500, 600, 700, 800]]", DET_END),
        (U, ": Locate ", REF, "a dog", REF_END, " in the given image.\n\n", A, ":"),
        (REF, "a dog", REF_END, DET, "[[0, 0, 999, 999]]", DET_END),
    ]


def test_grounded_caption_spans_at_phrase_positions():
    caption = "A man rides a bike past a man."
    s = sample(
        "grounding",
        [image(0), text(caption)],
        [picture(999, 1998)],
        [
            region("A man", [[1, 2, 3, 4]], segment=1, start=0, end=5),
            region("a bike", [[10, 20, 30, 40]], segment=1, start=12, end=18),
            region("bike", [[0, 0, 5, 5]], segment=1, start=14, end=18),  # overlaps "a bike": left out
            region("A man", [[5, 6, 7, 8]], segment=1, start=0, end=5),  # same span: same det list
        ],
    )
    user, answer = render(s).blocks
    assert user.parts == (
        U,
        ": ",
        0,
        "\n",
        "<|grounding|>",
        prompt("grounded_caption", s).split(">", 1)[1] + "\n\n",
        A,
        ":",
    )
    assert answer.parts == (
        REF, "A man", REF_END, DET, "[[1, 1, 3, 2], [5, 3, 7, 4]]", DET_END, " rides ",
        REF, "a bike", REF_END, DET, "[[10, 10, 30, 20]]", DET_END, " past a man.",
    )  # fmt: skip


def test_grounded_conversation_opens_with_grounding():
    s = sample(
        "grounding",
        [
            image(0, 0, "user"),
            text("\nWhere is the cat?", 0, "user"),
            text("The cat is here.", 1, "assistant"),
        ],
        [picture(999, 999)],
        [region("cat", [[1, 2, 3, 4]], segment=2, start=4, end=7)],
    )
    user, answer = render(s).blocks
    assert user.parts == (U, ": ", 0, "\n", "<|grounding|>", "Where is the cat?\n\n", A, ":")
    assert answer.parts == ("The ", REF, "cat", REF_END, DET, "[[1, 2, 3, 4]]", DET_END, " is here.")


def test_grounded_conversation_without_positions_is_left_as_it_is():
    content = [image(0, 0, "user"), text("Hi", 0, "user"), text("Yo", 1, "assistant")]
    s = sample("grounding", content, [picture()], [region("x", [[0, 0, 1, 1]])])
    assert render(s).blocks[0].parts == (U, ": ", 0, "Hi\n\n", A, ":")


# ----------------------------------------------------------------------------------------------------
# plain


def test_interleaved_document_joins_text_by_newline_and_images_in_place():
    s = sample(
        "interleaved",
        [
            text("  Title"),
            text("First."),
            image(0),
            text(" after"),
            image(1),
            image(2),
            text("end <|ref|>x \n"),
        ],
        [picture(), picture(), picture()],
    )
    out = render(s)
    assert out.render == "plain" and out.images == (0, 1, 2)
    assert out.blocks == (Block(("Title\nFirst.", 0, " after", 1, 2, "end ", REF, "x"), loss=True, eos=True),)


def test_caption_and_ocr_can_be_plain_text_is_always_plain():
    s = sample("caption", [image(0), text("A red bike.")], [picture()])
    assert render(s, TemplateConfig(render="plain")).blocks == (
        Block((0, "A red bike."), loss=True, eos=True),
    )
    t = sample("text", [text("Just text.")])
    assert render(t, TemplateConfig(render="chat")).blocks == (Block(("Just text.",), loss=True, eos=True),)
    c = sample("conversation", [text("Hi", 0, "user"), text("Yo", 1, "assistant")])
    assert render(c, TemplateConfig(render="plain")).render == "chat"


# ----------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    ("kind", "content", "images", "regions", "reason"),
    [
        ("caption", [text("a <image> b")], [], [], "placeholder_mismatch"),
        ("caption", [text("a")], [picture()], [], "placeholder_mismatch"),
        ("caption", [image(0), image(0), text("a")], [picture()], [], "placeholder_mismatch"),
        ("conversation", [text("q", 0, "user"), image(0, 1, "assistant")], [picture()], [], "bad_field"),
        ("conversation", [text("q", 0, "user"), text("a", 0, "assistant")], [], [], "bad_field"),
        ("conversation", [text("q", 0, "user")], [], [], "no_loss_tokens"),
        ("conversation", [text("q", 0, "user"), text("a", 1, "system")], [], [], "bad_field"),
        ("conversation", [text("q"), text("a", 1)], [], [], "bad_field"),
        ("grounding", [image(0)], [picture()], [], "missing_field"),
        ("grounding", [image(0)], [picture()], [region("x", [[0, 0, 1, 1]], image=3)], "bad_field"),
        (
            "grounding",
            [image(0), text("ab")],
            [picture()],
            [region("x", [[0, 0, 1, 1]], 0, 1, 1, 9)],
            "bad_field",
        ),
        ("interleaved", [text("  ")], [], [], "empty_text"),
        ("poem", [text("x")], [], [], "bad_field"),
    ],
)
def test_unrenderable_samples_name_a_reject_reason(kind, content, images, regions, reason):
    with pytest.raises(TemplateError) as error:
        render(sample(kind, content, images, regions))
    assert error.value.reason == reason


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="render='poem'"):
        TemplateConfig(render="poem")
    with pytest.raises(ValueError, match="unknown prompt list 'story'"):
        TemplateConfig(prompts={"story": ["Tell me."]})
    with pytest.raises(ValueError, match=r"\{query\} exactly once"):
        TemplateConfig(prompts={"referring": ["Find it."]})
    with pytest.raises(ValueError, match="may not hold <image>"):
        TemplateConfig(prompts={"caption": ["<image> what?"]})
    with pytest.raises(ValueError, match="non-empty list"):
        TemplateConfig(prompts={"caption": []})
    custom = TemplateConfig(prompts={"caption": ["Caption it."]})
    s = sample("caption", [image(0), text("x")], [picture()])
    assert render(s, custom).blocks[0].parts == (U, ": ", 0, "\nCaption it.\n\n", A, ":")
    incomplete = tmp_path / "p.json"
    incomplete.write_text(json.dumps({"caption": ["x"]}))
    with pytest.raises(ValueError, match="'ocr' is missing"):
        templates.load_prompts(incomplete)


def test_prompt_choice_is_deterministic_and_uses_the_whole_list():
    prompts = templates.load_prompts()["caption"]
    ids = [sample_id_for("s", str(i)) for i in range(200)]
    chosen = [templates.choose_prompt(prompts, i, "caption") for i in ids]
    assert chosen == [templates.choose_prompt(prompts, i, "caption") for i in ids]
    assert set(chosen) == set(prompts)


# ----------------------------------------------------------------------------------------------------
# boxes


def test_quantization_rounds_half_to_even_and_clamps():
    assert templates.quantize(0, 640) == 0
    assert templates.quantize(640, 640) == 999
    assert templates.quantize(700, 640) == 999 and templates.quantize(-3, 640) == 0
    assert templates.quantize(1, 1998) == 0  # 999 / 1998 = 0.5 → 0 (half to even)
    assert templates.quantize(3, 1998) == 2  # 1.5 → 2
    assert templates.quantize(5, 1998) == 2  # 2.5 → 2
    assert templates.format_boxes([[580, 270, 999, 900]], 999, 999) == "[[580, 270, 999, 900]]"
    assert templates.format_boxes([[0, 0, 1, 1], [2, 2, 3, 3]], 999, 999) == "[[0, 0, 1, 1], [2, 2, 3, 3]]"
    assert templates.box_pixels([580, 270, 999, 900], 1280, 720) == [743, 194, 1280, 648]


@given(
    st.integers(1, 20000),
    st.floats(-0.2, 1.2, allow_nan=False),
)
def test_quantization_within_one_unit_of_the_exact_value(size, share):
    x = share * size
    v = templates.quantize(x, size)
    exact = min(max(999 * x / size, 0), 999)
    assert 0 <= v <= 999 and abs(v - exact) <= 0.5 + 1e-9
    # The official inverse lands within one unit (in pixels: one 999th of the size) of the clamped pixel.
    (back,) = templates.box_pixels([v, 0, 0, 0], size, 1)[:1]
    assert abs(back - min(max(x, 0), size)) <= size / 999 + 1
