"""第 06 章：对话模板（chat template）。整门课只有这一种格式，训练、推理、导出都用它。

格式是 ChatML（OpenAI、Qwen 用的那种）：每条消息写成

    <|im_start|>{角色}\\n{内容}<|im_end|>\\n

角色只有 system（系统提示，可选，只能在最前面）、user（用户）、assistant（助手）三种。
整段对话前面加一个 <|endoftext|>（bos）：预训练时每篇文档都接在它后面，对话也从它开始。
要模型回答时，在最后补上「生成提示」（generation prompt）<|im_start|>assistant\\n，模型接着写，
写完一条回复就输出 <|im_end|>——生成到它就停。

    >>> format_chat([{"role": "user", "content": "你好"}], add_generation_prompt=True)
    '<|im_start|>user\\n你好<|im_end|>\\n<|im_start|>assistant\\n'

两件必须注意的事：
1. 训练和推理必须用同一个模板。CHAT_TEMPLATE 是同一格式的 Jinja 版本，export_hf(..., chat_template=CHAT_TEMPLATE)
   把它写进 Hugging Face 分词器，apply_chat_template 得到的 id 与 encode_chat 完全相同（tests/test_chat_format.py 核对）。
2. 用户输入里如果出现 "<|im_end|>" 这样的字符串，分词器会把它编码成真正的控制 id，用户就能伪造一条
   助手消息（提示注入）。所以所有消息内容先经过 sanitize()：把 "<|" 改成 "< |"、"<unk>" 改成 "< unk>"，
   文本里不再可能拼出任何特殊 token（课程的特殊 token 都以 "<|" 开头；"<unk>" 在 Hugging Face 分词器里也是特殊 token）。
"""
from __future__ import annotations

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
BOS = "<|endoftext|>"
ROLES = ("system", "user", "assistant")

# 默认的系统提示（system prompt）：告诉模型它是谁。SFT 数据里大部分对话带着它，推理时也默认带上。
DEFAULT_SYSTEM = "你是小雁，一个从零训练的中文小模型，回答简短、礼貌。"

# 消息内容里要改写的字符串 → 改写结果（按顺序各替换一遍；改写结果里不含 "<|"，也不含 "<unk>"）
_SANITIZE = (("<|", "< |"), ("<unk>", "< unk>"))


def sanitize(text: str) -> str:
    """让消息内容里不可能出现特殊 token：把 "<|" 改成 "< |"，"<unk>" 改成 "< unk>"。

    只替换一遍就够了：替换结果里的 "|" 前面是空格，不会和别的 "<" 重新拼成 "<|"。
    CHAT_TEMPLATE 里用 Jinja 的 replace 做同样的两次替换，所以两边的 id 一致。
    """
    if not isinstance(text, str):
        raise TypeError(f"消息内容必须是字符串，收到的是 {type(text).__name__}。")
    for old, new in _SANITIZE:
        text = text.replace(old, new)
    return text


def validate_messages(messages, add_generation_prompt: bool = False) -> None:
    """检查一段对话的结构，不合格时用中文说明哪里错了、怎么改。

    规则：消息是 {"role": ..., "content": 字符串} 的列表；system 最多一条且只能在最前面；其后 user 与 assistant
    严格交替、从 user 开始；add_generation_prompt=True 时最后一条必须是 user（要模型回答的那句话）。
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages 必须是非空的列表，例如 [{\"role\": \"user\", \"content\": \"你好\"}]。")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"第 {i + 1} 条消息应该是带 \"role\" 和 \"content\" 两个键的字典，收到 {m!r}。")
        if m["role"] not in ROLES:
            raise ValueError(f"第 {i + 1} 条消息的角色 {m['role']!r} 不认识：只能是 system、user、assistant。"
                             "（ShareGPT 数据里的 human/gpt 请先用 course_lib.sft.load_sharegpt 转换。）")
        if not isinstance(m["content"], str):
            raise ValueError(f"第 {i + 1} 条消息（{m['role']}）的 content 必须是字符串，收到 {type(m['content']).__name__}。")
    start = 1 if messages[0]["role"] == "system" else 0
    if start == 1 and len(messages) == 1:
        raise ValueError("对话里只有 system 消息：后面至少还要有一条 user 消息。")
    for i in range(start, len(messages)):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        role = messages[i]["role"]
        if role == expected:
            continue
        if role == "system":
            raise ValueError(f"第 {i + 1} 条消息是 system：系统提示只能有一条，而且必须放在最前面。")
        if expected == "assistant":
            raise ValueError(f"第 {i + 1} 条消息应该是 assistant 的回复，却是 {role}：缺了一轮助手回复"
                             "（两条 user 连在一起）。请补上中间的 assistant 消息，或把两条 user 合并成一条。")
        raise ValueError(f"第 {i + 1} 条消息应该是 user，却是 {role}：角色顺序不对。"
                         "对话必须从 user 开始（system 之后），user 与 assistant 交替出现。")
    if add_generation_prompt and messages[-1]["role"] != "user":
        raise ValueError("add_generation_prompt=True 表示让模型接着回答，最后一条消息必须是 user；"
                         f"现在最后一条是 {messages[-1]['role']}。")


def format_chat(messages, add_generation_prompt: bool = False) -> str:
    """对话 → ChatML 文本（不含开头的 bos）。add_generation_prompt=True 时末尾加上 <|im_start|>assistant\\n。"""
    validate_messages(messages, add_generation_prompt)
    text = "".join(f"{IM_START}{m['role']}\n{sanitize(m['content'])}{IM_END}\n" for m in messages)
    return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")


def check_chat_tokenizer(tokenizer) -> None:
    """对话模板要用有 <|im_start|>、<|im_end|> 的分词器（course_lib 的 BPETokenizer）。"""
    if not all(hasattr(tokenizer, name) for name in ("im_start_id", "im_end_id", "bos_id")):
        raise TypeError(f"对话模板需要 course_lib.tokenizer.BPETokenizer（第 05 章，有 <|im_start|>、<|im_end|> 等特殊 token），"
                        f"收到 {type(tokenizer).__name__}。字符级的 CharTokenizer 没有这些特殊 token。")


def encode_chat(messages, tokenizer, add_generation_prompt: bool = False) -> list[int]:
    """对话 → token id：bos + format_chat 的文本编码。与 Hugging Face 的 apply_chat_template(CHAT_TEMPLATE) 完全一致。"""
    text = format_chat(messages, add_generation_prompt)
    try:
        return tokenizer.encode(text, bos=True)
    except (TypeError, AttributeError):
        check_chat_tokenizer(tokenizer)
        raise


# 同一个格式的 Jinja 版本（Hugging Face transformers 的 apply_chat_template 用它）。
# raise_exception 是 transformers 提供给模板的函数；检查规则与 validate_messages 相同（报错文字更短）。
# 开头的 <|endoftext|> 直接写成文字，不用 {{ bos_token }}：导出时没登记 bos 的分词器也会得到同样的 id。
CHAT_TEMPLATE = (
    BOS +
    "{% for message in messages %}"
    "{% set offset = 1 if messages[0]['role'] == 'system' else 0 %}"
    "{% if message['role'] == 'system' and loop.index0 != 0 %}"
    "{{ raise_exception('system 消息只能有一条，而且必须放在最前面。') }}"
    "{% elif message['role'] != 'system' and (message['role'] == 'user') != ((loop.index0 - offset) % 2 == 0) %}"
    "{{ raise_exception('角色顺序不对：system 之后必须从 user 开始，user 与 assistant 交替出现。') }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] | replace('<|', '< |') | replace('<unk>', '< unk>')"
    " + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


# ---------------------------------------------------------------- 另一种常见格式（只用来对比）
def format_human_assistant(messages, add_generation_prompt: bool = False) -> str:
    """Llama2-Chinese / Atom 用的格式：每轮 "<s>Human: …\\n</s><s>Assistant: …\\n</s>"。

    课程的模型不是用它训练的；第 06 章用它演示「推理时换了模板，模型就不认识了」。
    system 消息没有位置放，这里把它并进第一条 user 消息。
    """
    validate_messages(messages, add_generation_prompt)
    parts, pending = [], ""
    for m in messages:
        if m["role"] == "system":
            pending = m["content"] + "\n"
        elif m["role"] == "user":
            parts.append(f"<s>Human: {pending}{m['content']}\n</s>")
            pending = ""
        else:
            parts.append(f"<s>Assistant: {m['content']}\n</s>")
    return "".join(parts) + ("<s>Assistant: " if add_generation_prompt else "")


def check_trainable(messages) -> None:
    """训练用的对话：结构合法（见 validate_messages），并且最后一条是助手的回复。"""
    validate_messages(messages)
    if messages[-1]["role"] != "assistant":
        raise ValueError("这段对话缺少助手的回复：训练样本的最后一条消息必须是 assistant（模型要学的就是它）。"
                         f"现在最后一条是 {messages[-1]['role']}。")
