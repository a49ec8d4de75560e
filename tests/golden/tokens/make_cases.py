"""The extended golden conversations: each case as the official `process_one` takes it and as the LLaVA
record vl2prep reads. `python make_cases.py > extended_cases.json`; then `run_official.py` gives their
official outputs (see README.md)."""

import json
import sys

COLORS = [
    (30, 160, 60),
    (200, 30, 30),
    (20, 180, 190),
    (250, 250, 250),
    (5, 5, 5),
    (230, 200, 40),
    (90, 90, 200),
]
cases = []


def image(name, width, height):
    color = COLORS[len(name) % len(COLORS)]
    return {"file": f"{name}_{width}x{height}.png", "width": width, "height": height, "color": list(color)}


def case(name, category, turns, images=(), system_message=None, source_system=None, note=""):
    """turns: list of (role, text) with role in user/assistant/system; images in order of placeholders."""
    images = list(images)
    conversation = []
    index = 0
    for role, text in turns:
        official = {"user": "<|User|>", "assistant": "<|Assistant|>", "system": "system"}[role]
        n = text.count("<image>")
        message = {"role": official, "content": text}
        if role == "user":
            message["images"] = [im["file"] for im in images[index : index + n]]
        index += n
        conversation.append(message)
    if source_system is not None:
        conversation.insert(0, {"role": "system", "content": source_system})
    llava_turns = [
        {"from": {"user": "human", "assistant": "gpt", "system": "system"}[r], "value": t} for r, t in turns
    ]
    record = {"id": name, "conversations": llava_turns}
    if len(images) == 1:
        record["image"] = images[0]["file"]
    elif images:
        record["image"] = [im["file"] for im in images]
    cases.append(
        {
            "name": name,
            "category": category,
            "conversation": conversation,
            "images": images,
            "system_prompt": "",
            "source_system": source_system,
            "inference_mode": False,
            "path": "training",
            "note": note,
            "llava": record,
        }
    )


U, A, S = "user", "assistant", "system"
# images: one, several, many; grids from 1x1 to 3x3 and extreme aspect ratios
case(
    "one_image_3x3",
    "one_image",
    [(U, "<image>\nWhat is in the picture?"), (A, "A large flat colour field.")],
    [image("big", 4000, 3000)],
)
case("one_image_tall", "one_image", [(U, "<image>\nRead the sign."), (A, "EXIT")], [image("tall", 384, 3456)])
case(
    "one_image_wide",
    "one_image",
    [(U, "<image>\nDescribe the banner."), (A, "A long thin banner.")],
    [image("wide", 3000, 200)],
)
case("one_image_tiny", "one_image", [(U, "<image>\nWhat is this?"), (A, "A dot.")], [image("dot", 3, 2)])
case(
    "one_image_385",
    "one_image",
    [(U, "<image>\nSize?"), (A, "Just over one tile.")],
    [image("edge", 385, 384)],
)
case(
    "image_at_end",
    "image_tag_position",
    [(U, "Look at this: <image>"), (A, "Seen.")],
    [image("end", 800, 600)],
)
case(
    "image_only_user",
    "image_tag_position",
    [(U, "<image>"), (A, "An image with nothing else.")],
    [image("only", 640, 640)],
)
case(
    "two_images_adjacent",
    "two_images",
    [(U, "<image><image>Which is brighter?"), (A, "The second one.")],
    [image("a", 640, 480), image("b", 1920, 1080)],
)
case(
    "two_images_two_turns",
    "two_images",
    [(U, "<image>\nWhat colour is this?"), (A, "Green."), (U, "<image>\nAnd this one?"), (A, "Red.")],
    [image("first", 500, 500), image("second", 1024, 768)],
)
case(
    "four_images",
    "three_five_images",
    [(U, "<image>\n<image>\n<image>\n<image>\nWhich one differs?"), (A, "The third.")],
    [image("p", 640, 480), image("q", 1920, 1080), image("r", 300, 300), image("s", 384, 3456)],
)
case(
    "five_images_across_turns",
    "three_five_images",
    [
        (U, "<image>\n<image>\nCompare."),
        (A, "Alike."),
        (U, "<image>\nNow this."),
        (A, "Darker."),
        (U, "Last two: <image> and <image>"),
        (A, "Both plain."),
    ],
    [
        image("v", 640, 480),
        image("w", 800, 800),
        image("x", 1200, 900),
        image("y", 200, 1500),
        image("z", 2048, 2048),
    ],
)
case(
    "three_images_three_turns",
    "three_five_images",
    [
        (U, "<image>\nOne."),
        (A, "Blue."),
        (U, "<image>\nTwo."),
        (A, "Red."),
        (U, "<image>\nThree."),
        (A, "Black."),
    ],
    [image("i1", 640, 480), image("i2", 480, 640), image("i3", 1000, 1000)],
)
# multi-turn shapes
case(
    "multiturn_3_pairs_text",
    "multi_turn",
    [
        (U, "Hello!"),
        (A, "Hi! How can I help?"),
        (U, "Name a colour."),
        (A, "Blue."),
        (U, "Another?"),
        (A, "Green."),
    ],
)
case(
    "multiturn_image_later",
    "multi_turn",
    [
        (U, "I will show you a picture."),
        (A, "Go ahead."),
        (U, "<image>\nHere it is. What is it?"),
        (A, "A square."),
    ],
    [image("later", 900, 600)],
)
case(
    "consecutive_user_turns",
    "multi_turn",
    [(U, "<image>\nFirst question."), (U, "Second question?"), (A, "One answer for both.")],
    [image("cons", 640, 480)],
)
case(
    "consecutive_assistant_turns",
    "multi_turn",
    [(U, "Say two things."), (A, "First thing."), (A, "Second thing.")],
)
case("trailing_user_turn", "multi_turn", [(U, "Q1?"), (A, "A1."), (U, "Q2?")])
case("assistant_first", "multi_turn", [(A, "I start."), (U, "Why?"), (A, "Because.")])
# system text
case(
    "sysmsg_multiturn",
    "system_message",
    [(S, "You are terse.\n"), (U, "<image>\nWhat is it?"), (A, "Red."), (U, "Sure?"), (A, "Yes.")],
    [image("sys", 640, 480)],
)
case("sysmsg_question_mark", "system_message", [(S, "  Can you help?  "), (U, "Yes?"), (A, "Yes.")])
case("sysmsg_cjk", "system_message", [(S, "你是一个乐于助人的助手。"), (U, "你好"), (A, "你好！")])
case("sysmsg_empty", "system_message", [(S, "   "), (U, "Hi."), (A, "Hello.")])
case(
    "source_system_multiturn",
    "source_system",
    [(U, "<image>\nWhat is shown?"), (A, "A blue field."), (U, "Anything else?"), (A, "No.")],
    [image("srcsys", 1280, 720)],
    source_system="Answer in one short sentence.",
)
case("source_system_punct", "source_system", [(U, "2+2?"), (A, "4")], source_system="Be exact!")
# text content
case(
    "emoji",
    "emoji",
    [(U, "<image>\nHow does it feel? 🙂"), (A, "Calm 😌🌊 and bright ☀️✨ — 10/10 👍🏽")],
    [image("emo", 640, 480)],
)
case(
    "code_answer",
    "code",
    [
        (U, "Write a Python function that adds two numbers."),
        (
            A,
            '```python\ndef add(a: int, b: int) -> int:\n    """Return a + b."""\n'
            "    return a + b\n```\n\nUse `add(1, 2)`.",
        ),
    ],
)
case(
    "code_tabs_question",
    "code",
    [
        (U, "<image>\nFix this:\n\tfor i in range(3):\n\t\tprint(i)\r\n"),
        (A, "It already runs.\n\tNothing to fix."),
    ],
    [image("code", 1366, 768)],
)
case("json_answer", "code", [(U, "Give JSON."), (A, '{"a": [1, 2, 3], "b": {"c": null, "d": "e\\n"}}')])
case(
    "markdown_table",
    "long_answer",
    [
        (U, "<image>\nTabulate the colours."),
        (A, "| colour | share |\n|---|---:|\n| red | 40% |\n| green | 35% |\n| blue | 25% |"),
    ],
    [image("table", 1000, 800)],
)
long_answer = " ".join(
    f"Sentence {i} describes part {i % 7} of the scene, noting its colour, texture and position "
    "relative to the others."
    for i in range(40)
)
case(
    "long_answer",
    "long_answer",
    [(U, "<image>\nDescribe everything in detail."), (A, long_answer)],
    [image("long", 640, 480)],
)
case(
    "long_multiparagraph",
    "long_answer",
    [
        (U, "Explain."),
        (A, "\n\n".join(f"Paragraph {i}.\nIt has two lines, the second ending here." for i in range(12))),
    ],
)
case(
    "japanese_korean",
    "cjk",
    [(U, "<image>\nこれは何ですか？"), (A, "これは猫です。고양이입니다.")],
    [image("jk", 640, 480)],
)
case("cjk_punct_before_sep", "cjk", [(U, "这是什么？"), (A, "一只猫。")])
case("arabic_rtl", "multilingual", [(U, "ما هذا؟"), (A, "هذه صورة.")])
case(
    "accents_math", "multilingual", [(U, "Résumé of ∑ᵢ xᵢ² ≤ 1?"), (A, "Ça va: ∀x ∈ ℝ, x² ≥ 0; naïve café.")]
)
case(
    "whitespace_inner",
    "whitespace",
    [
        (U, "\t<image>\n  two  spaces  and\ttabs\t\n"),
        (A, "\u00a0Non-breaking\u00a0space and ideographic\u3000space\u3000"),
    ],
    [image("wsi", 640, 480)],
)
case("whitespace_crlf", "whitespace", [(U, "Line one\r\nLine two\r\n"), (A, "\r\nOK\r\n")])
case(
    "answer_leading_newlines",
    "whitespace",
    [(U, "<image>"), (A, "\n\n\nStarts after newlines.")],
    [image("lead", 700, 500)],
)
case("question_ends_newline_punct", "whitespace", [(U, "What?!\n"), (A, "Nothing.")])
case("question_ends_colon", "whitespace", [(U, "Complete: a, b,"), (A, "c.")])
case("question_ends_quote", "whitespace", [(U, 'He said "hi."'), (A, "'Hello.'")])
case("question_ends_digits", "digits", [(U, "Count to 3: 1 2"), (A, "3")])
case(
    "digits_grouping",
    "digits",
    [(U, "Sum 99999 + 1?"), (A, "100000 (one hundred thousand); 3.14e-10; 0x1F; 2024-12-13.")],
)
case(
    "url_and_path",
    "digits",
    [(U, "Open https://example.com/a/b?c=1&d=2"), (A, "See /usr/local/bin and C:\\Temp\\x.txt.")],
)
# grounding
case(
    "grounding_question_ref",
    "grounding",
    [
        (U, "<image>\nLocate <|ref|>the red ball<|/ref|> in the given image."),
        (A, "<|ref|>the red ball<|/ref|><|det|>[[100, 200, 300, 400]]<|/det|>"),
    ],
    [image("ball", 1000, 750)],
)
case(
    "grounding_multi_box",
    "grounding",
    [
        (U, "<image>\nFind all cats."),
        (A, "<|ref|>cats<|/ref|><|det|>[[0, 0, 499, 499], [500, 500, 999, 999]]<|/det|>"),
    ],
    [image("cats", 1200, 900)],
)
case(
    "grounded_caption",
    "grounding",
    [
        (U, "<image>\n<|grounding|>Describe the image in detail."),
        (
            A,
            "There is <|ref|>a dog<|/ref|><|det|>[[12, 340, 560, 998]]<|/det|> next to "
            "<|ref|>a tree<|/ref|><|det|>[[600, 10, 990, 980]]<|/det|>.",
        ),
    ],
    [image("gcap", 1024, 768)],
)
case(
    "grounding_in_context",
    "grounding",
    [
        (
            U,
            "<|grounding|>In the first image, the object in <|det|>[[100, 100, 400, 400]]<|/det|> is a cup. "
            "Find it in the second image.<image><image>",
        ),
        (A, "<|ref|>a cup<|/ref|><|det|>[[500, 520, 700, 780]]<|/det|>"),
    ],
    [image("ctx1", 640, 480), image("ctx2", 800, 600)],
)
case(
    "grounding_ref_only",
    "grounding",
    [(U, "<image>\nWhat is <|ref|>this<|/ref|>?"), (A, "A lamp.")],
    [image("ref", 640, 480)],
)
# empty turns, as the official processor takes them
case("empty_answer", "empty_turn", [(U, "<image>\nSay nothing."), (A, "")], [image("empty", 640, 480)])
case("blank_answer_middle", "empty_turn", [(U, "First?"), (A, "  \n"), (U, "Second?"), (A, "Yes.")])
case("empty_user_turn", "empty_turn", [(U, "   "), (A, "An answer to nothing.")])
# non-special added tokens of the V3 tokenizer stay as the tokenizer makes them
case(
    "fullwidth_role_text",
    "added_tokens",
    [(U, "Type <｜User｜> or <｜fim▁hole｜>?"), (A, "Both are text here.")],
)

json.dump(
    {"meta": {"note": "conversations for the official processor; made by make_cases.py"}, "cases": cases},
    sys.stdout,
    ensure_ascii=False,
    indent=1,
)
