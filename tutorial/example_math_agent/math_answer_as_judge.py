"""The judges the math-agent YAML names. The rules live in `ajet.judge.math`; see there for details.

    task_judge:
      judge_protocol: tutorial.example_math_agent.math_answer_as_judge->MathAnswerAsJudge
      # or ...->MathAnswerAndLlmAsJudge, with task_judge.llm_judge.enabled: true for the LLM fallback

Both read `workflow_output.metadata["final_answer"]` and the task's reference answer and return
`(raw_reward, is_success)`: 1 for a correct final answer, 0 otherwise, minus the optional shaping
penalties `task_judge.format_penalty` (a malformed <tool_call> in the episode) and
`task_judge.behavior_penalty` (tool code that printed nothing).
"""

from ajet.judge.math import MathAnswerAndLlmAsJudge, MathAnswerAsJudge

__all__ = ["MathAnswerAndLlmAsJudge", "MathAnswerAsJudge"]
